"""The job counters and duration histograms of /metrics, derived from Prefect's flow runs.

The shim is stateless and there may be several API processes, so no process counts what it
enqueued: each one reads from Prefect the runs that ended since its last scrape and counts each
once (`FinishedJobs`). A counter of one process therefore counts every job of the system that
ended since that process started: counter semantics, reset at a restart, which `rate()` and
`increase()` handle. Several processes count the same jobs; a query takes one of them (`max
without (instance)`) or a ratio, which doubling does not change (monitoring/prometheus/rules.yml).

Reading is bounded: at most `BUDGET` runs per scrape, newest first within each window of end
times. What a scrape could not read stays a window of its own for the next scrapes, so a burst
is counted late but once. A run's end time is the time of its final state, which the worker
proposes before Prefect commits it: a scrape reads only the runs that ended `SETTLE` before it,
so that one committed late is still found (the counters lag by that much); runs at the edge of
two windows are remembered by id and end time, so none counts twice.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from uuid import UUID

from prometheus_client import Counter, Histogram

from deployments.control.states import JobState

#: How long after its end time a run is first looked for: its final state's commit may lag.
SETTLE = timedelta(seconds=10)
#: Most runs one scrape reads (in pages of 200): a bound on its cost, ~ms per page here.
BUDGET = 1000

JOBS_FINISHED = Counter(
    "mm_jobs_finished",
    "Jobs that ended since this API process started, by queue (pool), job type and final state"
    " (from Prefect: every process counts every job).",
    ["queue", "job_type", "state"],
)
JOB_SECONDS = Histogram(
    "mm_job_duration_seconds",
    "Seconds a job ran (Prefect's total run time) that ended since this API process started.",
    ["job_type"],
    buckets=(1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200, 14400, 43200, 86400),
)


@dataclass(frozen=True)
class FinishedJob:
    """A flow run of a job type that ended, as /metrics counts it."""

    id: UUID
    ended: datetime
    queue: str
    job_type: str
    state: JobState
    #: Seconds it ran; None when it never started (cancelled while waiting).
    seconds: float | None


#: Reads the jobs that ended at or after `after` and at or before `before` (None: up to now),
#: newest first, at most `limit` of them.
Read = Callable[[datetime, datetime | None, int], Awaitable[list[FinishedJob]]]


class FinishedJobs:
    """Counts each job that ended after `started` once, into `JOBS_FINISHED` and `JOB_SECONDS`."""

    def __init__(
        self, started: datetime, *, settle: timedelta = SETTLE, budget: int = BUDGET
    ) -> None:
        self.started = started
        self.settle = settle
        self.budget = budget
        #: Every run that ended before this was read (but those of `backlog`).
        self._next = started
        #: Windows of end times (after, before) a scrape ran out of budget for, oldest first.
        self.backlog: list[tuple[datetime, datetime]] = []
        #: Runs counted, by (id, end time), while a read may return them again (at an edge).
        self._counted: set[tuple[UUID, datetime]] = set()
        self._lock = asyncio.Lock()

    async def scrape(self, read: Read, now: datetime) -> int:
        """Read and count what ended up to `settle` before `now`; returns the runs read."""
        async with self._lock:
            windows = list(self.backlog)
            upper = now - self.settle
            if upper > self._next:
                windows.append((self._next, upper))
                self._next = upper
            budget, total, left = self.budget, 0, []
            for after, before in windows:
                if budget == 0:
                    left.append((after, before))
                    continue
                runs = await read(after, before, budget)
                total += len(runs)
                for run in runs:
                    self._count(run)
                if len(runs) >= budget:
                    # Newest first: all after the oldest one read are counted; from there back
                    # is left (its own end time again, for runs that share it).
                    oldest = min(run.ended for run in runs)
                    if oldest > after:
                        left.append((after, oldest))
                budget = max(budget - len(runs), 0)
            self.backlog = left
            floor = min([a for a, _ in left] + [self._next])
            self._counted = {key for key in self._counted if key[1] >= floor}
            return total

    def _count(self, run: FinishedJob) -> None:
        key = (run.id, run.ended)
        if run.ended < self.started or key in self._counted:
            return
        self._counted.add(key)
        JOBS_FINISHED.labels(run.queue, run.job_type, run.state.value).inc()
        if run.seconds is not None:
            JOB_SECONDS.labels(run.job_type).observe(run.seconds)
