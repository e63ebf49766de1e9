"""Counting the jobs that ended, once each, from reads of Prefect that overlap and run out of
budget (a fake read over a list of runs stands for Prefect's filter, newest first)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from uuid import uuid4

from prometheus_client import REGISTRY

from api_shim.finished_jobs import FinishedJob, FinishedJobs
from deployments.control.states import JobState

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def job(seconds_after: float, job_type: str, state: JobState = JobState.COMPLETED) -> FinishedJob:
    return FinishedJob(
        uuid4(), T0 + timedelta(seconds=seconds_after), "backup", job_type, state, 2.0
    )


class Prefect:
    """Runs that ended, read as Prefect's end-time filter reads them; every read recorded."""

    def __init__(self) -> None:
        self.runs: list[FinishedJob] = []
        self.reads: list[tuple[datetime, datetime | None, int]] = []

    async def read(self, after, before, limit):
        self.reads.append((after, before, limit))
        found = [r for r in self.runs if r.ended >= after and (before is None or r.ended <= before)]
        return sorted(found, key=lambda r: r.ended, reverse=True)[:limit]


def count(job_type: str, state: str = "completed") -> float:
    labels = {"queue": "backup", "job_type": job_type, "state": state}
    return REGISTRY.get_sample_value("mm_jobs_finished_total", labels) or 0.0


def scrape(tally: FinishedJobs, prefect: Prefect, at: float) -> int:
    return asyncio.run(tally.scrape(prefect.read, T0 + timedelta(seconds=at)))


def test_each_run_counts_once_and_one_committed_late_is_found() -> None:
    prefect, kind = Prefect(), f"t-{uuid4()}"
    tally = FinishedJobs(T0, settle=timedelta(seconds=10))
    prefect.runs += [job(-5, kind), job(3, kind), job(4, kind, JobState.FAILED)]  # one before start
    assert scrape(tally, prefect, 20) == 2
    assert (count(kind), count(kind, "failed")) == (1, 1)
    # Committed after the scrape at 20 s though it ended at 15 s: not read before 25 s.
    prefect.runs.append(job(15, kind))
    # One at the edge of two windows (10 s after the scrape at 20 s, read at both).
    prefect.runs.append(job(25, kind))
    scrape(tally, prefect, 35)
    scrape(tally, prefect, 50)
    assert count(kind) == 3
    # Each read starts where the last ended: nothing is read twice but at an edge.
    assert [(a - T0).seconds for a, _, _ in prefect.reads] == [0, 10, 25]
    hist = REGISTRY.get_sample_value("mm_job_duration_seconds_count", {"job_type": kind})
    assert hist == 4


def test_a_burst_beyond_the_budget_is_counted_over_later_scrapes_once() -> None:
    prefect, kind = Prefect(), f"t-{uuid4()}"
    tally = FinishedJobs(T0, budget=10)
    prefect.runs += [job(1 + i * 0.01, kind) for i in range(35)]
    reads = [scrape(tally, prefect, 5 + 15 * n) for n in range(5)]
    assert count(kind) == 35
    assert max(reads) <= 10  # the bound on one scrape
    assert not tally.backlog
    # Memory too: only runs at the edge of the next read are remembered.
    scrape(tally, prefect, 200)
    assert not tally._counted


def test_a_run_is_labelled_by_the_catalogue_and_a_stranger_as_other() -> None:
    from prefect.client.schemas.objects import FlowRun
    from prefect.states import Completed, Crashed

    from api_shim.gateway.finished import _finished

    def run(tags: list[str], state, pool: str | None = None) -> FlowRun:
        return FlowRun(
            flow_id=uuid4(),
            tags=tags,
            state=state,
            end_time=T0,
            start_time=T0 - timedelta(seconds=3),
            total_run_time=timedelta(seconds=3),
            work_pool_name=pool,
        )

    scan = _finished(run(["job:scan:quick"], Crashed(), pool="elsewhere"))
    assert (scan.queue, scan.job_type, scan.state, scan.seconds) == (
        "scan", "scan:quick", JobState.FAILED, 3.0
    )  # fmt: skip
    stranger = _finished(run([], Completed(), pool="backup"))
    assert (stranger.queue, stranger.job_type) == ("backup", "other")
