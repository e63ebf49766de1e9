"""A job's result, published as a table artifact of its flow run and read back by the API;
and the admins' part of its failure, as an artifact of the `FAILURE` type.

Flow return values are only kept by Prefect when results are persisted to storage that every
reader can reach; an artifact lives in Prefect's database, so the shim reads it in both modes,
and the UI shows it on the flow run's page. It is the only keyless table artifact of a run.

A failure about an operator's command says in its message (the run's state message, which users
read) only which step failed and how; the command text and output are in its `detail`
(`tasks.core.errors`), published beside it for the shim to show admins (`full_reason`).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from uuid import UUID

from prefect import get_run_logger
from prefect.artifacts import Artifact, create_table_artifact
from prefect.client.orchestration import PrefectClient
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    ArtifactFilterKey,
    ArtifactFilterType,
)
from prefect.client.schemas.sorting import ArtifactSort
from prefect.logging.loggers import PrefectLogAdapter
from prefect.settings import get_current_settings

from tasks.core.errors import JobError

DESCRIPTION = "Job result"

#: `@flow` options of every job flow: Prefect persists no result of ours (the artifact is the
#: result). The storage named is where Prefect would fall back to anyway; without a name, each
#: run asks the server for its default storage once per result store Prefect builds (three
#: `GET /api/admin/storage` per run, measured in bench/run_cost.py).
RESULT_OPTIONS: dict[str, Any] = {
    "persist_result": False,
    "result_storage": Path(get_current_settings().results.local_storage_path),
}


def publish_result(result: dict[str, Any]) -> dict[str, Any]:
    """Attach `result` to the running flow run; returns it for the flow to return."""
    create_table_artifact(table=[result], description=DESCRIPTION)
    return result


#: Artifact type of a failure's detail: `{"summary": message, "detail": message for admins}`.
FAILURE = "failure"


@contextmanager
def failure_published() -> Iterator[None]:
    """Publish the `detail` of a `JobError` raised inside, then let it go on."""
    try:
        yield
    except JobError as exc:
        if exc.detail is not None:
            Artifact(
                type=FAILURE,
                description="Job failure, as admins see it",
                data={"summary": str(exc), "detail": exc.detail},
            ).create()
        raise


def full_reason(message: str, failures: Iterable[Any]) -> str:
    """An admin's view of a failed run's state `message`, given the data of its `FAILURE`
    artifacts, newest first: the summary of the newest one in the message replaced by its detail.

    Matched by summary, since a backup can publish two (a failed pre, then a failed post) and a
    run retried since a failure may have failed otherwise: then the message stays as it is.
    """
    for failure in failures:
        try:
            published = json.loads(failure) if isinstance(failure, str) else failure
            summary, detail = published["summary"], published["detail"]
        except (ValueError, TypeError, KeyError):
            continue
        if isinstance(summary, str) and isinstance(detail, str) and summary and summary in message:
            return message.replace(summary, detail, 1)
    return message


async def read_failures(client: PrefectClient, flow_run_id: UUID) -> list[Any]:
    """The data of a flow run's `FAILURE` artifacts, newest first, for `full_reason`."""
    artifacts = await client.read_artifacts(
        artifact_filter=ArtifactFilter(
            flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]),
            type=ArtifactFilterType(any_=[FAILURE]),
        ),
        sort=ArtifactSort.UPDATED_DESC,
    )
    return [artifact.data for artifact in artifacts]


async def read_result(client: PrefectClient, flow_run_id: UUID) -> dict[str, Any] | None:
    """The published result of a flow run, or None if it has none (yet)."""
    artifacts = await client.read_artifacts(
        artifact_filter=ArtifactFilter(
            flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]),
            type=ArtifactFilterType(any_=["table"]),
            key=ArtifactFilterKey(exists_=False),
        ),
        sort=ArtifactSort.UPDATED_DESC,
        limit=1,
    )
    if not artifacts:
        return None
    data = artifacts[0].data
    rows = json.loads(data) if isinstance(data, str) else data
    if isinstance(rows, list) and rows and isinstance(rows[0], dict):
        return rows[0]
    return None


#: The logger of an operator's command's output lines in a run's logs: a child of Prefect's
#: task-run logger, so they reach Prefect's log like any other line, and by its name the API
#: shows them to admins only (deployments/control/jobs.py, `read_logs`).
COMMAND_OUTPUT_LOGGER = "prefect.task_runs.command-output"


def command_output_logger() -> PrefectLogAdapter:
    """This run's logger for the output of an operator's command (a hook, an update)."""
    run = get_run_logger()
    assert isinstance(run, PrefectLogAdapter)
    return PrefectLogAdapter(run.logger.manager.getLogger(COMMAND_OUTPUT_LOGGER), run.extra)
