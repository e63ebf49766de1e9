"""Admin operations on whole queues: pause/resume the pools, delete old finished jobs."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

from prefect.client.schemas.actions import WorkPoolUpdate
from prefect.client.schemas.filters import (
    FlowRunFilter,
    FlowRunFilterDeploymentId,
    FlowRunFilterEndTime,
    FlowRunFilterId,
    FlowRunFilterState,
    FlowRunFilterStateType,
)
from prefect.client.schemas.objects import StateType
from prefect.client.schemas.sorting import FlowRunSort

from api_shim.gateway import POOLS, Gateway
from api_shim.gateway.errors import OrchestratorUnavailable
from api_shim.schemas import CleanResult, QueuePaused
from deployments.catalogue import DEPLOYMENTS

#: The most runs Prefect deletes in one bulk call (FACTS.md).
BATCH = 50
_FINISHED = [StateType.COMPLETED, StateType.FAILED, StateType.CRASHED]


async def set_paused(gateway: Gateway, queue: str | None, paused: bool) -> list[QueuePaused]:
    """Pause (or resume) one pool or all; held runs stay Scheduled and show as `paused`."""
    pools = (queue,) if queue else POOLS
    await asyncio.gather(
        *(
            gateway.call(
                "update_work_pool",
                gateway.client.update_work_pool(pool, WorkPoolUpdate(is_paused=paused)),
            )
            for pool in pools
        )
    )
    return [QueuePaused(queue=pool, paused=paused) for pool in pools]


async def clean(gateway: Gateway, older_than: timedelta, keep_completed: int) -> CleanResult:
    """Delete completed and failed jobs that ended before `older_than` ago, and completed jobs
    beyond the newest `keep_completed` of each queue: the original `removeOnComplete
    {age, count}` and `removeOnFail {age}`."""
    cutoff = datetime.now(UTC) - older_than
    by_queue: dict[str, int] = {}
    for pool in POOLS:
        deployment_ids = await _deployment_ids(gateway, pool)
        if not deployment_ids:
            by_queue[pool] = 0
            continue
        of_pool = FlowRunFilterDeploymentId(any_=deployment_ids)
        old = FlowRunFilter(
            deployment_id=of_pool,
            state=FlowRunFilterState(type=FlowRunFilterStateType(any_=_FINISHED)),
            end_time=FlowRunFilterEndTime(before_=cutoff),
        )
        deleted = await _delete_all(gateway, old)
        deleted += await _delete_beyond(gateway, of_pool, keep_completed)
        by_queue[pool] = deleted
    return CleanResult(deleted=sum(by_queue.values()), by_queue=by_queue)


async def _deployment_ids(gateway: Gateway, pool: str) -> list[UUID]:
    """The deployments whose runs go to `pool` (a bulk delete cannot filter by pool)."""
    ids = []
    for deployment in DEPLOYMENTS:
        if deployment.queue.name == pool:
            found = await gateway.call(
                "read_deployment",
                gateway.client.read_deployment_by_name(deployment.full_name),
            )
            ids.append(found.id)
    return ids


async def _delete_all(gateway: Gateway, runs: FlowRunFilter) -> int:
    """Delete every run matching `runs`, a batch at a time."""
    total = 0
    while True:
        deleted = await _bulk_delete(gateway, runs)
        total += deleted
        if deleted < BATCH:
            return total


async def _delete_beyond(gateway: Gateway, of_pool: FlowRunFilterDeploymentId, keep: int) -> int:
    """Delete completed runs past the newest `keep` (by end time), a batch at a time."""
    completed = FlowRunFilter(
        deployment_id=of_pool,
        state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.COMPLETED])),
    )
    total = 0
    while True:
        # The runs past the first `keep` move up as each batch goes, so the offset stays.
        extra = await gateway.call(
            "read_flow_runs",
            gateway.client.read_flow_runs(
                flow_run_filter=completed,
                sort=FlowRunSort.END_TIME_DESC,
                offset=keep,
                limit=BATCH,
            ),
        )
        if not extra:
            return total
        total += await _bulk_delete(
            gateway, FlowRunFilter(id=FlowRunFilterId(any_=[run.id for run in extra]))
        )


async def _bulk_delete(gateway: Gateway, runs: FlowRunFilter) -> int:
    body: dict[str, Any] = {"flow_runs": runs.model_dump(mode="json", exclude_unset=True)}
    body["limit"] = BATCH
    # The client has no method for this endpoint (Prefect 3.9); the route is public API.
    response = await gateway.call(
        "bulk_delete",
        gateway.client.request("POST", "/flow_runs/bulk_delete", json=body),  # type: ignore[arg-type]
    )
    deleted = response.json().get("deleted")
    if not isinstance(deleted, list):
        raise OrchestratorUnavailable("the Prefect API answered a bulk delete without `deleted`")
    return len(deleted)
