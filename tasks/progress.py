"""Job progress (0-100 %) as a Prefect progress artifact of the flow run, and reading it back.

The flow's first update creates one progress artifact; later ones, from its tasks too, move it
forward. The artifact shows in the flow run's page of the Prefect UI; `read_progress` is how
the API shim and the CLI read it (no artifact yet reads as 0 %).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from uuid import UUID

from prefect.artifacts import update_progress_artifact
from prefect.client.orchestration import PrefectClient, get_client
from prefect.client.schemas.actions import ArtifactCreate
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    ArtifactFilterType,
)
from prefect.client.schemas.sorting import ArtifactSort
from prefect.runtime import flow_run

#: At most one update is sent per this many seconds; the latest one waits at most this long.
MIN_INTERVAL = 0.5

#: The percentage of a finished job: sent at once, whatever was sent just before.
DONE = 100.0


class Progress:
    """The progress of the running flow; a plain value so it can be handed to tasks.

    Each update is a request to Prefect's server, and a quick job passes all its milestones in
    about a second. Updates closer than MIN_INTERVAL to the last one sent are held and merged:
    only the latest is sent, by a timer, MIN_INTERVAL after the last one. A reader is never more
    than MIN_INTERVAL behind, and the job's end (100 %) is sent at once.
    """

    def __init__(self, flow_run_id: UUID | None = None) -> None:
        self.flow_run_id = flow_run_id
        #: Created with the first update sent: a created artifact at 0 % would be one more
        #: request per job, which a reader could not tell from no artifact.
        self.artifact_id: UUID | None = None
        self.percent = 0.0
        self._last_sent = time.monotonic()
        self._held: tuple[float, str] | None = None
        self._timer: threading.Timer | None = None
        self._lock = threading.Lock()

    @classmethod
    def start(cls) -> Progress:
        """The progress of the flow run now starting, at 0 %."""
        run_id = flow_run.get_id()
        return cls(UUID(run_id) if run_id else None)

    def milestone(self, percent: float, message: str) -> None:
        """Move to a documented milestone."""
        self._offer(percent, message)

    def between(self, low: float, high: float, done: float, total: float, message: str) -> None:
        """Move within [low, high] by the fraction `done / total`."""
        fraction = min(1.0, done / total) if total > 0 else 0.0
        percent = round(low + (high - low) * fraction, 1)
        if percent > self.percent:
            self._offer(percent, message)

    def _offer(self, percent: float, message: str) -> None:
        with self._lock:
            self.percent = percent
            wait = self._last_sent + MIN_INTERVAL - time.monotonic()
            if percent < DONE and wait > 0:
                self._held = (percent, message)
                if self._timer is None:
                    self._timer = threading.Timer(wait, self._send_held)
                    self._timer.daemon = True
                    self._timer.start()
                return
            self._held = None
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            self._send(percent, message)

    def _send_held(self) -> None:
        with self._lock:
            self._timer = None
            if self._held is not None:
                self._send(*self._held)
                self._held = None

    def _send(self, percent: float, message: str) -> None:
        """Called with the lock held."""
        self._last_sent = time.monotonic()
        self._record(percent, message)

    def _record(self, percent: float, message: str) -> None:
        """Write `percent` into the flow run's progress artifact, created the first time."""
        if self.artifact_id is None:
            # Named, not read from the run context: the first send may come from the timer's
            # thread, which has none (an artifact created there would belong to no run).
            created = get_client(sync_client=True).create_artifact(
                ArtifactCreate(
                    type="progress",
                    description=message,
                    flow_run_id=self.flow_run_id,
                    data=percent,
                )
            )
            self.artifact_id = created.id
        else:
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
