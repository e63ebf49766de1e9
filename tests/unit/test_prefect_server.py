"""The server launcher's changes to Prefect: transactions in turn, schema checks remembered,
states of before a restart counted as seen."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from prefect.utilities.schema_tools import validation

from deployments.system import prefect_server
from deployments.system.prefect_server import _turn, remember_earlier_states, remember_schema_checks


def test_transactions_take_turns_first_come_first_served():
    order: list[str] = []

    async def transaction(name: str, hold: float) -> None:
        async with _turn():
            order.append(f"{name} in")
            await asyncio.sleep(hold)
            order.append(f"{name} out")

    async def main() -> None:
        first = asyncio.create_task(transaction("a", 0.05))
        await asyncio.sleep(0)
        await asyncio.gather(first, transaction("b", 0.01), transaction("c", 0.0))

    asyncio.run(main())
    assert order == ["a in", "a out", "b in", "b out", "c in", "c out"]


def test_a_nested_transaction_of_the_same_task_does_not_wait_for_itself():
    async def main() -> str:
        async with _turn(), _turn():
            return "no deadlock"

    assert asyncio.run(asyncio.wait_for(main(), 2)) == "no deadlock"


def test_a_transaction_that_waits_too_long_goes_ahead(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(prefect_server, "TURN_TIMEOUT", 0.05)

    async def main() -> list[str]:
        seen: list[str] = []

        async def holder() -> None:
            async with _turn():
                await asyncio.sleep(0.5)

        task = asyncio.create_task(holder())
        await asyncio.sleep(0.01)
        async with _turn():
            seen.append("went ahead")
        await task
        return seen

    assert asyncio.run(main()) == ["went ahead"]


def test_a_schema_is_checked_once_and_a_bad_one_every_time(monkeypatch: pytest.MonkeyPatch):
    calls: list[object] = []
    original = validation._VALIDATOR.check_schema

    def counting(schema: object, *args: object, **kwargs: object) -> None:
        calls.append(schema)
        original(schema, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(validation._VALIDATOR, "check_schema", counting)
    monkeypatch.setattr(prefect_server, "_CHECKED_SCHEMAS", type(prefect_server._CHECKED_SCHEMAS)())
    remember_schema_checks()
    good = {"type": "object", "properties": {"n": {"type": "integer"}}}
    for _ in range(3):
        validation.validate({"n": 1}, good, raise_on_error=True)
    with pytest.raises(validation.ValidationError):
        validation.validate({"n": "x"}, good, raise_on_error=True)
    assert len(calls) == 1
    for _ in range(2):
        with pytest.raises(ValueError, match="Invalid schema"):
            validation.is_valid_schema({"type": 5}, preprocess=False)
    assert len(calls) == 3


NESTED_READ = """
import asyncio, sys, time
import sqlalchemy as sa
from deployments.system.prefect_server import queue_sqlite_writers
queue_sqlite_writers()
from prefect.server.database import provide_database_interface

async def main():
    db = provide_database_interface()
    async with db.session_context(begin_transaction=True) as outer:
        await outer.execute(sa.text("CREATE TABLE t (x int)"))
    began = time.monotonic()
    async with db.session_context(begin_transaction=True) as outer:
        await outer.execute(sa.text("INSERT INTO t VALUES (1)"))
        async with db.session_context() as inner:
            await inner.execute(sa.text("SELECT count(*) FROM t"))
    print(f"{time.monotonic() - began:.2f}")

asyncio.run(main())
"""


def test_a_read_in_a_second_session_inside_a_transaction_does_not_wait_for_it(tmp_path):
    """Prefect opens a second session inside a transaction (pausing a work queue does); with
    every transaction IMMEDIATE, that session's read must not begin IMMEDIATE too and wait
    for the outer transaction until SQLite's busy timeout (60 s, then "database is locked")."""
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")},
        "PREFECT_HOME": str(tmp_path),
        "PREFECT_API_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{tmp_path}/prefect.db",
        "PREFECT_API_DATABASE_TIMEOUT": "5",
    }
    result = subprocess.run(
        [sys.executable, "-c", NESTED_READ],
        env=env,
        cwd=Path(prefect_server.__file__).parent.parent,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert float(result.stdout.split()[-1]) < 2.0


def test_a_state_change_after_a_restart_does_not_wait_for_its_earlier_state():
    """Triggers hold an event back until they saw the one it follows; after a restart, a
    follower of a state stored before the start goes ahead, one of an unknown event waits."""
    from prefect.server.events.ordering import EventArrivedEarly
    from prefect.server.events.ordering.memory import CausalOrdering
    from prefect.server.events.schemas.events import Event

    ordering = CausalOrdering(scope=f"test-{uuid.uuid4()}")
    earlier, unknown = uuid.uuid4(), uuid.uuid4()

    def crashed_after(leader: uuid.UUID) -> Any:
        resource = {"prefect.resource.id": f"prefect.flow-run.{uuid.uuid4()}"}
        return Event(
            occurred=datetime.now(UTC),
            event="prefect.flow-run.Crashed",
            resource=resource,
            id=uuid.uuid4(),
            follows=leader,
        ).receive()

    remember_earlier_states(ordering, [earlier])

    asyncio.run(ordering.wait_for_leader(crashed_after(earlier)))
    with pytest.raises(EventArrivedEarly):
        asyncio.run(ordering.wait_for_leader(crashed_after(unknown)))
