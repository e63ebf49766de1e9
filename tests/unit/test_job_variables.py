"""No run chooses its command, environment or working directory: the pools' template fixes them,
and every job flow fails a run that carries job variables, before it does anything else."""

from __future__ import annotations

import asyncio
import inspect
import json
from pathlib import Path
from typing import Any
from uuid import uuid4

import pytest
from prefect.client.orchestration import PrefectClient
from prefect.flows import load_flow_from_entrypoint
from prefect.workers.process import ProcessJobConfiguration

from deployments.control.bootstrap import PROJECT_DIR
from deployments.control.catalogue import ALL_DEPLOYMENTS, Deployment
from deployments.control.job_template import base_job_template
from flows import job_variables
from flows.job_variables import ACCEPTED_JOB_VARIABLES, refusal, refused_job_variables
from tasks.core.errors import JobVariablesRefused, PermanentError

#: What a caller of the Prefect API could send to take over a worker.
HOSTILE: dict[str, Any] = {
    "command": "sh -c 'id > /tmp/owned'",
    "env": {"PYTHONPATH": "/tmp/evil"},
    "env.LD_PRELOAD": "/tmp/evil.so",
    "working_dir": "/tmp/evil",
}


def test_a_run_without_job_variables_is_accepted() -> None:
    assert refused_job_variables(None) == []
    assert refused_job_variables({}) == []


def test_command_env_and_working_dir_are_refused_dotted_ones_too() -> None:
    assert refused_job_variables(HOSTILE) == ["command", "env", "env.LD_PRELOAD", "working_dir"]


def test_the_refusal_names_the_variables_and_says_why() -> None:
    message = refusal(["command", "env"])
    assert message.startswith("refused: job variables command, env are not accepted")
    assert "would choose what the worker runs" in message
    assert refusal(["env"]).startswith("refused: job variable env is not accepted")
    assert issubclass(JobVariablesRefused, PermanentError)  # Failed at once, never retried.


def test_the_template_offers_exactly_the_accepted_variables() -> None:
    template = base_job_template(Path("/srv/mm"))
    assert set(template["variables"]["properties"]) == ACCEPTED_JOB_VARIABLES
    # No placeholder for anything else: its value is fixed here or Prefect's default.
    placeholders = {
        key for key, value in template["job_configuration"].items() if "{{" in json.dumps(value)
    }
    assert placeholders == ACCEPTED_JOB_VARIABLES
    assert "env" not in template["job_configuration"]  # Prefect would merge a run's env into it.


def test_hostile_variables_change_nothing_the_worker_starts() -> None:
    """What either worker type builds from our template and a hostile run's variables."""

    async def configure(values: dict[str, Any]) -> ProcessJobConfiguration:
        # The client is only used for block or variable references, and the template has none.
        async with PrefectClient(api="http://127.0.0.1:9/api") as client:
            return await ProcessJobConfiguration.from_template_and_values(
                base_job_template(Path("/srv/mm")), values, client=client
            )

    plain = asyncio.run(configure({}))
    hostile = asyncio.run(configure(HOSTILE))
    assert hostile.model_dump() == plain.model_dump()
    assert hostile.command is None  # The worker starts Prefect's engine.
    assert hostile.env == {}  # The worker's environment, and the run's own Prefect variables.
    assert hostile.working_dir == Path("/srv/mm")


def _arguments(deployment: Deployment) -> dict[str, Any]:
    """Values for a flow's required parameters (all are server ids)."""
    flow = load_flow_from_entrypoint(deployment.entrypoint)
    parameters = inspect.signature(flow.fn).parameters.values()
    return {p.name: uuid4() for p in parameters if p.default is inspect.Parameter.empty}


@pytest.mark.parametrize("deployment", ALL_DEPLOYMENTS, ids=lambda d: d.name)
def test_every_job_flow_refuses_job_variables_before_anything_else(
    deployment: Deployment, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(PROJECT_DIR)
    monkeypatch.setattr(job_variables, "current_job_variables", lambda: {"command": "id"})
    flow = load_flow_from_entrypoint(deployment.entrypoint)
    # Anything but the check first would fail otherwise: no inventory, no Prefect server here.
    with pytest.raises(JobVariablesRefused, match="job variable command is not accepted"):
        called = flow.fn(**_arguments(deployment))
        if inspect.iscoroutine(called):  # the digest flow is async
            asyncio.run(called)
