"""Retention of job records (flow runs): the original `removeOnComplete` / `removeOnFail`.

One implementation, used by the maintenance flow, `medicine-man clean` and `POST
/api/jobs/clean`. Per work pool (a queue of the original), it deletes:

- completed runs that ended more than `completed_age` ago (default 7 days);
- completed runs beyond the newest `completed_count` of the pool by end time (default 1,000);
- failed and crashed runs that ended more than `failed_age` ago (default 7 days).

Anything else stays: runs not yet final, cancelled runs, runs of no pool. Prefect's database
vacuum (`PREFECT_SERVER_SERVICES_DB_VACUUM_ENABLED`) has no "keep the last N" rule, hence this.
Deletes go through `POST /flow_runs/bulk_delete`, 50 runs a call (its limit). A dry run counts
what would go instead, deleting nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from uuid import UUID

from prefect.client.orchestration import PrefectClient
from prefect.client.schemas.filters import (
    FlowRunFilter,
    FlowRunFilterEndTime,
    FlowRunFilterState,
    FlowRunFilterStateType,
    WorkPoolFilter,
    WorkPoolFilterName,
)
from prefect.client.schemas.objects import StateType
from prefect.client.schemas.sorting import FlowRunSort

from tasks.core.settings import JobRecordSettings

#: The most runs Prefect deletes in one bulk call (docs/DESIGN.md, "Prefect behaviour the code
#: relies on").
BATCH = 50

_FAILED = [StateType.FAILED, StateType.CRASHED]


@dataclass(frozen=True)
class JobRetention:
    """Which finished job records to keep."""

    completed_age: timedelta = timedelta(days=7)
    completed_count: int = 1000
    failed_age: timedelta = timedelta(days=7)


def job_retention(settings: JobRecordSettings) -> JobRetention:
    """The policy of MM_COMPLETED_JOBS_DAYS, MM_COMPLETED_JOBS_PER_QUEUE, MM_FAILED_JOBS_DAYS."""
    return JobRetention(
        completed_age=timedelta(days=settings.completed_jobs_days),
        completed_count=settings.completed_jobs_per_queue,
        failed_age=timedelta(days=settings.failed_jobs_days),
    )


async def clean_job_records(
    client: PrefectClient,
    policy: JobRetention,
    pools: list[str] | None = None,
    *,
    dry_run: bool = False,
) -> dict[str, int]:
    """Delete what `policy` does not keep; returns the number deleted per pool.

    Args:
        pools: the pools to clean; default: every work pool of the server.
        dry_run: count what would be deleted, and delete nothing.
    """
    if pools is None:
        pools = [pool.name for pool in await client.read_work_pools()]
    now = datetime.now(UTC)
    deleted: dict[str, int] = {}
    for pool in pools:
        of_pool = WorkPoolFilter(name=WorkPoolFilterName(any_=[pool]))
        if dry_run:
            deleted[pool] = await _count_doomed(client, of_pool, policy, now)
            continue
        total = await _delete_all(
            client, of_pool, _ended_before([StateType.COMPLETED], now - policy.completed_age)
        )
        total += await _delete_all(client, of_pool, _ended_before(_FAILED, now - policy.failed_age))
        completed = FlowRunFilter(
            state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.COMPLETED]))
        )
        # The runs past the newest `completed_count` move up as each batch goes: same offset.
        total += await _delete_all(client, of_pool, completed, offset=policy.completed_count)
        deleted[pool] = total
    return deleted


async def _count_doomed(
    client: PrefectClient, of_pool: WorkPoolFilter, policy: JobRetention, now: datetime
) -> int:
    """What `clean_job_records` would delete in the pool: the same three rules, counted."""

    async def count(runs: FlowRunFilter) -> int:
        return await client.count_flow_runs(flow_run_filter=runs, work_pool_filter=of_pool)

    old_completed = await count(_ended_before([StateType.COMPLETED], now - policy.completed_age))
    old_failed = await count(_ended_before(_FAILED, now - policy.failed_age))
    completed = await count(
        FlowRunFilter(
            state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.COMPLETED]))
        )
    )
    # The count rule applies to the completed runs the age rule leaves.
    beyond = max(0, completed - old_completed - policy.completed_count)
    return old_completed + old_failed + beyond


def _ended_before(types: list[StateType], cutoff: datetime) -> FlowRunFilter:
    return FlowRunFilter(
        state=FlowRunFilterState(type=FlowRunFilterStateType(any_=types)),
        end_time=FlowRunFilterEndTime(before_=cutoff),
    )


async def _delete_all(
    client: PrefectClient, of_pool: WorkPoolFilter, runs: FlowRunFilter, offset: int = 0
) -> int:
    """Delete the runs of the pool matching `runs` (past the first `offset` by end time)."""
    total = 0
    while True:
        batch = await client.read_flow_runs(
            flow_run_filter=runs,
            work_pool_filter=of_pool,
            sort=FlowRunSort.END_TIME_DESC,
            offset=offset,
            limit=BATCH,
        )
        if not batch:
            return total
        deleted = await bulk_delete(client, [run.id for run in batch])
        total += deleted
        if deleted == 0:
            return total  # nothing would go next time either


async def bulk_delete(client: PrefectClient, ids: list[UUID]) -> int:
    """Delete up to `BATCH` runs by id in one call; returns how many went."""
    body = {"flow_runs": {"id": {"any_": [str(i) for i in ids[:BATCH]]}}, "limit": BATCH}
    # The client has no method for this endpoint (Prefect 3.9); the route is public API.
    response = await client.request("POST", "/flow_runs/bulk_delete", json=body)  # type: ignore[arg-type]
    deleted = response.json().get("deleted")
    if not isinstance(deleted, list):
        raise RuntimeError("the Prefect API answered a bulk delete without `deleted`")
    return len(deleted)
