"""api_shim/gateway/changes.py: which runs an event is about, and who is woken."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from prefect.events.schemas.events import Event, RelatedResource, Resource

from api_shim.gateway import changes
from api_shim.gateway.changes import JobChanges, runs_of


def _event(name: str, resource: str, related: tuple[str, ...] = ()) -> Event:
    return Event(
        event=name,
        resource=Resource({"prefect.resource.id": resource}),
        related=[
            RelatedResource({"prefect.resource.id": r, "prefect.resource.role": "flow-run"})
            for r in related
        ],
    )


def test_an_event_is_about_its_run_or_the_runs_it_relates_to() -> None:
    run, other = uuid.uuid4(), uuid.uuid4()
    assert runs_of(_event("prefect.flow-run.Running", f"prefect.flow-run.{run}")) == {run}
    artifact = _event(
        "prefect.artifact.updated",
        f"prefect.artifact.{uuid.uuid4()}",
        (f"prefect.flow-run.{other}",),
    )
    assert runs_of(artifact) == {other}
    assert runs_of(_event("prefect.flow-run.Running", "prefect.flow-run.not-an-id")) == set()


def test_listeners_of_a_run_are_woken_by_its_events_and_only_by_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    run, other = uuid.uuid4(), uuid.uuid4()
    feed: asyncio.Queue[Event] = asyncio.Queue()

    @asynccontextmanager
    async def subscriber(**_: Any) -> AsyncIterator[AsyncIterator[Event]]:
        async def events() -> AsyncIterator[Event]:
            while True:
                yield await feed.get()

        yield events()

    monkeypatch.setattr(changes, "get_events_subscriber", subscriber)

    async def scenario() -> None:
        watch = JobChanges()
        with watch.listen(run) as mine, watch.listen(other) as theirs:
            await asyncio.sleep(0.01)
            assert watch.live
            # The wake-up of a new subscription, for what changed before it.
            assert mine.is_set() and theirs.is_set()
            mine.clear()
            theirs.clear()
            await feed.put(_event("prefect.flow-run.Completed", f"prefect.flow-run.{run}"))
            await asyncio.wait_for(mine.wait(), 1)
            assert not theirs.is_set()
            # A pause may hold anyone's job: everyone reads again.
            mine.clear()
            await feed.put(_event("prefect.work-queue.paused", f"prefect.work-queue.{run}"))
            await asyncio.wait_for(theirs.wait(), 1)
            assert mine.is_set()
        assert not watch._listeners  # left: nobody is woken for them any more
        await watch.close()

    asyncio.run(scenario())


def test_without_a_subscription_nobody_waits_for_events(monkeypatch: pytest.MonkeyPatch) -> None:
    @asynccontextmanager
    async def refused(**_: Any) -> AsyncIterator[None]:
        raise ConnectionRefusedError("no server")
        yield

    monkeypatch.setattr(changes, "get_events_subscriber", refused)

    async def scenario() -> None:
        watch = JobChanges()
        with watch.listen(uuid.uuid4()):
            await asyncio.sleep(0.01)
            assert not watch.live  # listeners poll on their own meanwhile
        await watch.close()

    asyncio.run(scenario())
