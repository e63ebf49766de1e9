"""Whether Prefect has what a job needs to be accepted: the pools of the queue table, their
priority work queues, and every deployment of the catalogue.

The gateway's `health` asks; it keeps one `ReadyMark` and the reads go through its `call`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Collection, Mapping
from dataclasses import dataclass
from typing import Protocol, TypeVar
from uuid import UUID

from prefect.client.orchestration import PrefectClient
from prefect.client.schemas.filters import (
    DeploymentFilter,
    DeploymentFilterName,
    FlowFilter,
    FlowFilterName,
    WorkQueueFilter,
    WorkQueueFilterName,
)

from deployments.control.catalogue import ALL_DEPLOYMENTS
from deployments.control.queues import QUEUES, Priority

#: Seconds a complete look stays good. /health may be polled every few seconds by several
#: probes (a load balancer's, an orchestrator's, `make up`'s); while the mark is fresh they cost
#: Prefect nothing, so their number does not matter: at most one look (three reads) per
#: 5 s. Short, because the mark is all /health knows: a deployment deleted or a Prefect outage
#: shows within 5 s, less than one period of a typical readiness probe; and an enqueue that
#: finds its deployment missing, or a call that finds Prefect unreachable, forgets it at once.
READY_RECHECK_SECONDS = 5.0

#: What /health names when Prefect does not answer at all.
PREFECT_API = "Prefect API"

T = TypeVar("T")

#: The work queues every pool has, by name.
WORK_QUEUES: tuple[str, ...] = tuple(p.queue_name for p in Priority)

#: The queue Prefect gives every pool and refuses to delete: seen, it shows the pool exists even
#: when all of ours are gone.
DEFAULT_QUEUE = "default"


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


def full_names(
    deployments: Collection[tuple[str, UUID, UUID]], flows: Mapping[UUID, str]
) -> dict[str, UUID]:
    """The deployments' ids by `flow/deployment` name, from (name, flow id, id) triples and the
    flows' names by id; one whose flow is not among `flows` is left out (not one of ours)."""
    return {
        f"{flows[flow_id]}/{name}": deployment_id
        for name, flow_id, deployment_id in deployments
        if flow_id in flows
    }


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


async def look(call: Call, client: PrefectClient) -> tuple[dict[str, set[str]], dict[str, UUID]]:
    """The work queues of each pool that has any, and the ids of the catalogue's deployments
    found, by full name: three reads at once, each filtered to our names so its answer stays
    small whatever else the Prefect server holds."""
    ours = WorkQueueFilter(name=WorkQueueFilterName(any_=[*WORK_QUEUES, DEFAULT_QUEUE]))
    flow_names = FlowFilter(
        name=FlowFilterName(any_=sorted({d.flow_name for d in ALL_DEPLOYMENTS}))
    )
    names = DeploymentFilter(
        name=DeploymentFilterName(any_=sorted({d.name for d in ALL_DEPLOYMENTS}))
    )
    queues, deployments, flows = await asyncio.gather(
        # Across all pools in one read; each queue names its pool, and every pool keeps its
        # default queue, so a pool without queues here does not exist.
        call("read_work_queues", client.read_work_queues(work_queue_filter=ours)),
        call(
            "read_deployments",
            client.read_deployments(flow_filter=flow_names, deployment_filter=names),
        ),
        # A deployment names its flow by id only: the flows' names make the full names.
        call("read_flows", client.read_flows(flow_filter=flow_names)),
    )
    pools: dict[str, set[str]] = {}
    for queue in queues:
        if queue.work_pool_name is not None:
            pools.setdefault(queue.work_pool_name, set()).add(queue.name)
    found = full_names(
        [(d.name, d.flow_id, d.id) for d in deployments], {f.id: f.name for f in flows}
    )
    return pools, found
