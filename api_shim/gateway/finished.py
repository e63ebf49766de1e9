"""The jobs that ended within a window of end times, for /metrics' job counters."""

from __future__ import annotations

from datetime import datetime

from prefect.client.schemas.filters import (
    FlowRunFilter,
    FlowRunFilterDeploymentId,
    FlowRunFilterEndTime,
    FlowRunFilterState,
    FlowRunFilterStateType,
)
from prefect.client.schemas.objects import FlowRun
from prefect.client.schemas.sorting import FlowRunSort

from api_shim.finished_jobs import FinishedJob
from api_shim.gateway import POOLS, Gateway
from deployments.control.catalogue import CATALOGUE
from deployments.control.jobs import PAGE, job_name
from deployments.control.states import STATE_TABLE, job_state
from tasks.core.jobs import JobType

#: Prefect's state types whose job state is final: the one table says which.
FINAL_TYPES = [state_type for state_type, job in STATE_TABLE.items() if job.final]


async def finished_jobs(
    gateway: Gateway, after: datetime, before: datetime | None, limit: int
) -> list[FinishedJob]:
    """Up to `limit` runs of the job types' deployments that ended in [after, before], newest
    first (Prefect sorts by end time descending only), in pages of `PAGE`."""
    deployments = await gateway.deployments_of(POOLS)
    flow_run_filter = FlowRunFilter(
        deployment_id=FlowRunFilterDeploymentId(any_=deployments),
        state=FlowRunFilterState(type=FlowRunFilterStateType(any_=FINAL_TYPES)),
        end_time=FlowRunFilterEndTime(after_=after, before_=before),
    )
    runs: list[FlowRun] = []
    while len(runs) < limit:
        wanted = min(PAGE, limit - len(runs))
        page = await gateway.call(
            "read_finished_runs",
            gateway.client.read_flow_runs(
                flow_run_filter=flow_run_filter,
                sort=FlowRunSort.END_TIME_DESC,
                limit=wanted,
                offset=len(runs),
            ),
        )
        runs.extend(page)
        if len(page) < wanted:
            break
    return [_finished(run) for run in runs if run.end_time is not None and run.state is not None]


def _queue(job_type: str, run: FlowRun) -> str:
    """The job type's queue in the catalogue; the run's pool for a name it does not know."""
    try:
        return CATALOGUE[JobType(job_type)].queue.name
    except ValueError:
        return run.work_pool_name or "unknown"


def _finished(run: FlowRun) -> FinishedJob:
    assert run.end_time is not None and run.state is not None
    job_type = job_name(run)
    return FinishedJob(
        id=run.id,
        ended=run.end_time,
        queue=_queue(job_type, run),
        job_type=job_type,
        state=job_state(run.state.type),
        seconds=run.total_run_time.total_seconds() if run.start_time is not None else None,
    )
