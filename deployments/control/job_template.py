"""The pools' base job template: every value fixed, nothing a run or a deployment can override.

Prefect's process template (`ProcessWorker.get_default_base_job_template()`) fills `command`,
`env` and `working_dir` from job variables, which any caller of the API may set per run: a
command of their choosing would run as the worker's user, who holds every server's SSH key.
Ours offers only `ACCEPTED_JOB_VARIABLES` (none), so both worker types start each run as
Prefect's engine, in the worker's environment, in the project directory, whatever a run carries;
a run that carries variables anyway is failed by its flow (`flows.job_variables`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect.workers.process import ProcessWorker

from flows.job_variables import ACCEPTED_JOB_VARIABLES


def base_job_template(project_dir: Path) -> dict[str, Any]:
    """The template of every pool, for runs of the checkout at `project_dir`.

    `working_dir` is the bootstrap's project directory, as the deployments' entrypoints are
    relative to it; the worker's own directory would not do, as the stock worker runs in a
    temporary directory when none is set. No `command`: the worker starts Prefect's engine. No
    `env` key at all: Prefect merges a run's `env` variable into a dict here even without a
    placeholder (`BaseJobConfiguration.from_template_and_values`); without it a run gets the
    worker's environment and its own Prefect variables.
    """
    stock = ProcessWorker.get_default_base_job_template()
    offered = {
        name: schema
        for name, schema in stock["variables"]["properties"].items()
        if name in ACCEPTED_JOB_VARIABLES
    }
    return {
        "job_configuration": {
            **{name: stock["job_configuration"][name] for name in offered},
            "working_dir": str(project_dir),
        },
        "variables": {**stock["variables"], "properties": offered},
    }
