"""The queue table: the one place that says which pools exist and how they behave.

The original design's three BullMQ queues are three Prefect process work pools; its job
priorities 1-4 are four work queues inside every pool (Prefect drains lower numbers first).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from enum import IntEnum


class Priority(IntEnum):
    """Job priority; the work queue of that name has this Prefect priority."""

    #: Server updates.
    CRITICAL = 1
    #: Backups.
    HIGH = 2
    #: Scans.
    NORMAL = 3
    #: Maintenance such as cleaning old jobs.
    LOW = 4

    @property
    def queue_name(self) -> str:
        return self.name.lower()

    @classmethod
    def from_name(cls, name: str) -> Priority:
        try:
            return cls[name.upper()]
        except KeyError:
            allowed = ", ".join(p.queue_name for p in cls)
            raise ValueError(f"unknown priority {name!r}; use one of {allowed}") from None


@dataclass(frozen=True)
class Queue:
    """One work pool: the heir of one BullMQ queue."""

    #: Work pool name, also the `queue` the API speaks of.
    name: str
    #: Most runs of this pool at once, enforced by the pool and by each worker's `--limit`.
    concurrency: int
    #: How long a run may go without a sign of life before it counts as stalled.
    lock_duration: timedelta
    #: Work queue that jobs of this pool go to unless asked otherwise.
    default_priority: Priority
    description: str


QUEUES: tuple[Queue, ...] = (
    Queue("backup", 2, timedelta(minutes=5), Priority.HIGH, "Backups of servers over SSH"),
    Queue("scan", 5, timedelta(minutes=2), Priority.NORMAL, "Inventory scans of servers"),
    Queue("update", 1, timedelta(minutes=10), Priority.CRITICAL, "Software updates of servers"),
)

QUEUES_BY_NAME: dict[str, Queue] = {queue.name: queue for queue in QUEUES}


def get_queue(name: str) -> Queue:
    """The queue of that name, or a `ValueError` naming the allowed ones."""
    try:
        return QUEUES_BY_NAME[name]
    except KeyError:
        allowed = ", ".join(QUEUES_BY_NAME)
        raise ValueError(f"unknown queue {name!r}; use one of {allowed}") from None
