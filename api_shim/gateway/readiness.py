"""Whether Prefect has what a job needs to be accepted: the pools of the queue table, their
priority work queues, and every deployment of the catalogue.

Pure logic; the gateway reads Prefect and keeps one `ReadyMark`.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass

from deployments.catalogue import ALL_DEPLOYMENTS
from deployments.queues import QUEUES, Priority

#: Seconds a complete look stays good. Pools, queues and deployments vanish only when someone
#: deletes them or the database is rebuilt, so a probe every few seconds costs one Prefect call
#: (the reachability check) instead of eight; a half-minute bounds how long /health may miss
#: such a loss, and an enqueue that finds its deployment missing forgets the mark at once.
READY_RECHECK_SECONDS = 30.0

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
