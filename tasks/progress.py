"""Job progress (0-100 %) as a Prefect progress artifact of the flow run, and reading it back.

The flow creates one progress artifact; its tasks move it forward. The artifact shows in the
flow run's page of the Prefect UI; `read_progress` is how the API shim and the CLI read it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import cast
from uuid import UUID

from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.client.orchestration import PrefectClient
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    ArtifactFilterType,
)
from prefect.client.schemas.sorting import ArtifactSort

#: Fewer updates than this many seconds apart are dropped (except milestones).
MIN_INTERVAL = 0.5


class Progress:
    """The progress of the running flow; a plain value so it can be handed to tasks."""

    def __init__(self, artifact_id: UUID) -> None:
        self.artifact_id = artifact_id
        self.percent = 0.0
        self._last_update = 0.0

    @classmethod
    def start(cls, message: str = "queued") -> Progress:
        """Create the flow run's progress artifact at 0 %."""
        return cls(cast(UUID, create_progress_artifact(progress=0.0, description=message)))

    def milestone(self, percent: float, message: str) -> None:
        """Move to a documented milestone; always recorded."""
        self._set(percent, message)

    def between(self, low: float, high: float, done: float, total: float, message: str) -> None:
        """Move within [low, high] by the fraction `done / total`, at most every MIN_INTERVAL s."""
        fraction = min(1.0, done / total) if total > 0 else 0.0
        percent = round(low + (high - low) * fraction, 1)
        if percent <= self.percent or time.monotonic() - self._last_update < MIN_INTERVAL:
            return
        self._set(percent, message)

    def _set(self, percent: float, message: str) -> None:
        self.percent = percent
        self._last_update = time.monotonic()
        update_progress_artifact(self.artifact_id, progress=percent, description=message)


@dataclass(frozen=True)
class ProgressReading:
    """The latest progress of a flow run."""

    percent: float
    message: str | None


async def read_progress(client: PrefectClient, flow_run_id: UUID) -> ProgressReading | None:
    """The progress of a flow run, or None if it has not reported any yet."""
    artifacts = await client.read_artifacts(
        artifact_filter=ArtifactFilter(
            flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]),
            type=ArtifactFilterType(any_=["progress"]),
        ),
        sort=ArtifactSort.UPDATED_DESC,
        limit=1,
    )
    if not artifacts:
        return None
    artifact = artifacts[0]
    percent = artifact.data if isinstance(artifact.data, int | float) else 0.0
    return ProgressReading(percent=float(percent), message=artifact.description)
