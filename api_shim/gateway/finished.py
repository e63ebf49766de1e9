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


#: The job type label of a run that names none of ours (made by hand, without a `job:` tag or
#: a `job_type` parameter): one value, not its flow id, so that labels stay few.
OTHER = "other"


def _kind(run: FlowRun) -> tuple[str, str]:
    """The run's job type and its queue in the catalogue (the run's pool for another)."""
    try:
        job_type = JobType(job_name(run))
    except ValueError:
        return OTHER, run.work_pool_name or "unknown"
    return job_type.value, CATALOGUE[job_type].queue.name


def _finished(run: FlowRun) -> FinishedJob:
    assert run.end_time is not None and run.state is not None
    job_type, queue = _kind(run)
    return FinishedJob(
        id=run.id,
        ended=run.end_time,
        queue=queue,
        job_type=job_type,
        state=job_state(run.state.type),
        seconds=run.total_run_time.total_seconds() if run.start_time is not None else None,
    )
