"""Admin operations on whole queues: pause/resume the pools, delete old finished jobs."""

from __future__ import annotations

from datetime import timedelta

from api_shim.gateway import POOLS, Gateway
from api_shim.schemas import CleanResult, QueuePaused
from deployments.control.jobs import set_paused as set_pools_paused
from tasks.job_records import JobRetention, clean_job_records


async def set_paused(gateway: Gateway, queue: str | None, paused: bool) -> list[QueuePaused]:
    """Pause (or resume) one pool or all; held runs stay Scheduled and show as `paused`."""
    pools = await gateway.call("update_work_pool", set_pools_paused(gateway.client, queue, paused))
    return [QueuePaused(queue=pool, paused=paused) for pool in pools]


async def clean(gateway: Gateway, older_than: timedelta, keep_completed: int) -> CleanResult:
    """Delete completed and failed jobs that ended before `older_than` ago, and completed jobs
    beyond the newest `keep_completed` of each queue: the original `removeOnComplete
    {age, count}` and `removeOnFail {age}`, by the maintenance flow's own code."""
    policy = JobRetention(
        completed_age=older_than, completed_count=keep_completed, failed_age=older_than
    )
    by_queue = await gateway.call(
        "clean", clean_job_records(gateway.client, policy, pools=list(POOLS))
    )
    return CleanResult(deleted=sum(by_queue.values()), by_queue=by_queue)
