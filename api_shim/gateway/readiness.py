"""Whether Prefect has what a job needs to be accepted: the pools of the queue table, their
priority work queues, and every deployment of the catalogue.

The gateway's `health` asks; it keeps one `ReadyMark` and the reads go through its `call`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Collection, Mapping
from dataclasses import dataclass
from typing import Protocol, TypeVar

from prefect.client.orchestration import PrefectClient

from api_shim.gateway.errors import JobNotFound
from deployments.control.catalogue import ALL_DEPLOYMENTS
from deployments.control.queues import QUEUES, Priority

#: Seconds a complete look stays good. Pools, queues and deployments vanish only when someone
#: deletes them or the database is rebuilt, so a probe every few seconds costs one Prefect call
#: (the reachability check) instead of eight; a half-minute bounds how long /health may miss
#: such a loss, and an enqueue that finds its deployment missing forgets the mark at once.
READY_RECHECK_SECONDS = 30.0

T = TypeVar("T")

#: The work queues every pool has, by name.
WORK_QUEUES: tuple[str, ...] = tuple(p.queue_name for p in Priority)


def missing_parts(pools: Mapping[str, Collection[str]], deployments: Collection[str]) -> list[str]:
    """What is absent, in the queue table's and catalogue's order, e.g. `work queue scan/low`.

    Args:
        pools: the work queues found, by the name of each pool found.
        deployments: the full names (`flow/deployment`) of the deployments found.
    """
    missing: list[str] = []
    for queue in QUEUES:
        if queue.name not in pools:
            missing.append(f"work pool {queue.name}")
            continue
        found = pools[queue.name]
        missing.extend(f"work queue {queue.name}/{q}" for q in WORK_QUEUES if q not in found)
    missing.extend(
        f"deployment {d.full_name}" for d in ALL_DEPLOYMENTS if d.full_name not in deployments
    )
    return missing


@dataclass
class ReadyMark:
    """When everything was last seen in place; `due` says whether to look again."""

    recheck_seconds: float = READY_RECHECK_SECONDS
    seen_at: float | None = None

    def due(self, now: float) -> bool:
        return self.seen_at is None or now - self.seen_at >= self.recheck_seconds

    def seen(self, now: float) -> None:
        self.seen_at = now

    def forget(self) -> None:
        self.seen_at = None


class Call(Protocol):
    """`Gateway.call`: one Prefect call with a deadline, its errors translated into ours."""

    def __call__(
        self, operation: str, awaitable: Awaitable[T], *, create: bool = False
    ) -> Awaitable[T]: ...


async def work_queues(
    call: Call, client: PrefectClient, pools: Collection[str]
) -> dict[str, set[str]]:
    """The names of the work queues of each of `pools` that exists."""
    found = await call("read_work_pools", client.read_work_pools())
    ours = [p.name for p in found if p.name in pools]

    async def queues_of(pool: str) -> set[str] | None:
        try:
            read = await call("read_work_queues", client.read_work_queues(work_pool_name=pool))
        except JobNotFound:  # deleted since the pools were read
            return None
        return {q.name for q in read}

    queues = await asyncio.gather(*(queues_of(pool) for pool in ours))
    return {pool: q for pool, q in zip(ours, queues, strict=True) if q is not None}
