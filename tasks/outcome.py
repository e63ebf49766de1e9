"""A job's result, published as a table artifact of its flow run and read back by the API.

Flow return values are only kept by Prefect when results are persisted to storage that every
reader can reach; an artifact lives in Prefect's database, so the shim reads it in both modes,
and the UI shows it on the flow run's page. It is the only keyless table artifact of a run.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from uuid import UUID

from prefect.artifacts import create_table_artifact
from prefect.client.orchestration import PrefectClient
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    ArtifactFilterKey,
    ArtifactFilterType,
)
from prefect.client.schemas.sorting import ArtifactSort
from prefect.settings import get_current_settings

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
