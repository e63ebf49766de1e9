"""Which job variables a run may carry (none), and the check every job flow makes first.

A job variable overrides the pool's base job template for one run, and the process worker's
template would let it choose the command, environment and working directory of the run's
process: anyone who can create a flow run could run any program as the worker's user, the user
holding every server's SSH key. So the pools' template (deployments/control/job_template.py) fixes
them and offers no variable, and a run that carries one anyway fails at its start with the
reason, on either worker type: the override had no effect, and its caller should hear so.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from prefect.runtime import flow_run

from tasks.core.errors import JobVariablesRefused

#: Job variables a run may set; the pools' template offers exactly these. None: the rest of the
#: process worker's (`name`, `labels`, `stream_output`) change nothing a job needs.
ACCEPTED_JOB_VARIABLES: frozenset[str] = frozenset()


def refused_job_variables(job_variables: Iterable[str] | None) -> list[str]:
    """The names among `job_variables` that are not accepted, sorted; dotted ones included
    (Prefect reads `env.FOO` as `env: {FOO: ...}`)."""
    return sorted(
        name for name in job_variables or () if name.split(".", 1)[0] not in ACCEPTED_JOB_VARIABLES
    )


def refusal(refused: list[str]) -> str:
    """The message a refused run ends with."""
    one = len(refused) == 1
    return (
        f"refused: job variable{'' if one else 's'} {', '.join(refused)}"
        f" {'is' if one else 'are'} not accepted for this deployment"
        f" ({'it' if one else 'they'} would choose what the worker runs)"
    )


def current_job_variables() -> Mapping[str, Any] | None:
    """The running flow run's own job variables (None outside a flow run)."""
    variables: Mapping[str, Any] | None = flow_run.job_variables
    return variables


def refuse_job_variables() -> None:
    """Fail the run, for good, if it carries a job variable that is not accepted.

    Raises:
        JobVariablesRefused: a permanent error, so the run ends Failed (not Crashed: the crash
            automations do not run it again) and no task is retried.
    """
    refused = refused_job_variables(current_job_variables())
    if refused:
        raise JobVariablesRefused(refusal(refused))
