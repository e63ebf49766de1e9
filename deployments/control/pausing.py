"""Pause and resume work pools: held runs stay Scheduled, running ones go on.

One implementation for the CLI (`medicine-man pause|resume [QUEUE]`) and the API shim
(`POST /api/queues/pause|resume`). A paused pool hands no runs to its workers; on resume they
take the backlog in work-queue priority order (critical first) within the pool's limit.
"""

from __future__ import annotations

import asyncio

from prefect.client.orchestration import PrefectClient
from prefect.client.schemas.actions import WorkPoolUpdate

from deployments.control.queues import QUEUES, get_queue


def pools_of(queue: str | None) -> list[str]:
    """The pool `queue`, or all pools when it is None; `ValueError` naming the allowed ones."""
    return [get_queue(queue).name] if queue is not None else [q.name for q in QUEUES]


async def set_paused(client: PrefectClient, queue: str | None, paused: bool) -> list[str]:
    """Pause (or resume) the pool `queue`, or all pools when it is None; returns their names.

    Raises:
        ValueError: `queue` is not one of the pools; the message names the allowed ones.
    """
    pools = pools_of(queue)
    await asyncio.gather(
        *(client.update_work_pool(pool, WorkPoolUpdate(is_paused=paused)) for pool in pools)
    )
    return pools
