"""Which jobs changed, from Prefect's event stream: one subscription per shim process serves
every open `GET /api/jobs/:id/events`, in place of a read of each job every half second (100
open streams were 200 reads a second of the Prefect server).

A job changes when its flow run gets a state (`prefect.flow-run.*`, the run as the resource)
or its progress artifact moves (`prefect.artifact.*`, the run as a related resource: the
events worker of the run attaches it, prefect/events/worker.py); a job not started yet also
when a pool or work queue is paused or resumed (`prefect.work-pool.*`, `prefect.work-queue.*`:
rare, so they wake every listener). A listener is woken, reads the job once, and sleeps until
the next change. What no event tells is a delayed job's time coming: it shows `waiting` at its
next read, or goes straight to `active` if its pool takes it at once (docs/DESIGN.md).

While there is no subscription (before the first one, or while it reconnects) listeners read
on their own every `events_poll` seconds, and every listener is woken once a subscription is up
again, for what it may have missed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator
from datetime import UTC, datetime
from uuid import UUID

from prefect.events.clients import get_events_subscriber
from prefect.events.filters import EventFilter, EventNameFilter, EventOccurredFilter
from prefect.events.schemas.events import Event

log = logging.getLogger("api_shim")

_RUN_PREFIX = "prefect.flow-run."
#: Events about what holds jobs back, which may concern any listener's job.
_HOLDS = ("prefect.work-pool.", "prefect.work-queue.")
#: Seconds between attempts to subscribe again after the stream failed.
RESUBSCRIBE_SECONDS = 2.0


def _changes_from_now() -> EventFilter:
    """The events that change what a job reads (its run's states, its progress artifact, the
    holds on its pool) from now on: the server would first send those it stored since the
    filter's default, 180 days ago."""
    return EventFilter(
        occurred=EventOccurredFilter(since=datetime.now(UTC)),
        event=EventNameFilter(prefix=[_RUN_PREFIX, "prefect.artifact.", *_HOLDS]),
    )


def runs_of(event: Event) -> set[UUID]:
    """The flow runs an event is about: its resource, or the runs it relates to."""
    ids = [event.resource.id, *(related.id for related in event.related)]
    runs = set()
    for resource_id in ids:
        if resource_id.startswith(_RUN_PREFIX):
            with contextlib.suppress(ValueError):
                runs.add(UUID(resource_id.removeprefix(_RUN_PREFIX)))
    return runs


class JobChanges:
    """Wakes the listeners of a job when an event about its run arrives."""

    def __init__(self) -> None:
        self._listeners: dict[UUID, set[asyncio.Event]] = {}
        self._follower: asyncio.Task[None] | None = None
        #: Subscribed now: events will come.
        self.live = False

    @contextlib.contextmanager
    def listen(self, job_id: UUID) -> Iterator[asyncio.Event]:
        """An event set at each change of the job (the listener clears it); read the job after
        entering, so that no change falls between the read and the subscription."""
        changed = asyncio.Event()
        self._listeners.setdefault(job_id, set()).add(changed)
        if self._follower is None or self._follower.done():
            self._follower = asyncio.create_task(self._follow(), name="job changes")
        try:
            yield changed
        finally:
            listeners = self._listeners.get(job_id, set())
            listeners.discard(changed)
            if not listeners:
                self._listeners.pop(job_id, None)

    def wake(self, runs: set[UUID]) -> None:
        for run_id in runs:
            for changed in self._listeners.get(run_id, ()):
                changed.set()

    async def close(self) -> None:
        if self._follower is not None:
            self._follower.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._follower

    async def _follow(self) -> None:
        """Follow the stream while anyone listens; the first listener starts it again."""
        while self._listeners:
            try:
                async with get_events_subscriber(filter=_changes_from_now()) as subscriber:
                    self.live = True
                    self.wake(set(self._listeners))  # what changed while not subscribed
                    async for event in subscriber:
                        holds = event.event.startswith(_HOLDS)
                        self.wake(set(self._listeners) if holds else runs_of(event))
                        if not self._listeners:
                            return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("Prefect's event stream failed (%s); job events poll meanwhile", exc)
            finally:
                self.live = False
            await asyncio.sleep(RESUBSCRIBE_SECONDS)
