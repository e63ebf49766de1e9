"""A create without an answer ends with the job found, or a 503 and no job that runs."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any
from uuid import uuid4

import pytest
from prefect.client.schemas.objects import FlowRun, StateType
from prefect.states import Completed, Running, Scheduled

from api_shim.gateway import creation
from api_shim.gateway.creation import Reaper, settle


class FakeClient:
    """Answers `read_flow_runs` from a script of results; records the states it is sent."""

    def __init__(self, *answers: Any) -> None:
        self.answers = list(answers)
        self.reads = 0
        self.states: list[tuple[Any, Any]] = []

    async def read_flow_runs(self, **_: Any) -> list[FlowRun]:
        self.reads += 1
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(answer, Exception):
            raise answer
        return list(answer)

    async def set_flow_run_state(self, run_id: Any, state: Any, force: bool = False) -> None:
        self.states.append((run_id, state))


def run_in(state: Any) -> FlowRun:
    return FlowRun(flow_id=uuid4(), state=state)


@pytest.fixture
def fast_reaper(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(creation, "REAP_POLL", 0.01)
    monkeypatch.setattr(creation, "REAP_SECONDS", 1.0)


async def _settle(client: FakeClient, *, callers_key: bool, ask: bool = True) -> tuple[Any, Reaper]:
    reaper = Reaper(client)  # type: ignore[arg-type]
    result = await settle(
        lambda: creation.find_by_key(client, "k"),  # type: ignore[arg-type]
        reaper,
        "k",
        "Prefect did not answer",
        callers_key=callers_key,
        ask=ask,
    )
    return result, reaper


def test_a_run_that_was_created_after_all_is_the_answer():
    found = run_in(Scheduled())

    async def main() -> None:
        result, reaper = await _settle(FakeClient([found]), callers_key=False)
        assert result is found
        assert reaper.watching == 0

    asyncio.run(main())


@pytest.mark.parametrize("lookup", [[], OSError("down")], ids=["not-found", "lookup-fails"])
def test_without_a_key_the_answer_is_503_and_a_late_run_is_cancelled(lookup, fast_reaper):
    late = run_in(Scheduled())
    client = FakeClient(lookup, [], [late])

    async def main() -> None:
        result, reaper = await _settle(client, callers_key=False)
        assert isinstance(result, str) and "not created" in result
        assert reaper.watching == 1
        for _ in range(200):
            if client.states:
                break
            await asyncio.sleep(0.01)
        await reaper.close()

    asyncio.run(main())
    ((run_id, state),) = client.states
    assert run_id == late.id
    assert state.type is StateType.CANCELLED
    assert "answered 503" in state.message


def test_a_late_run_already_started_is_stopped_and_a_finished_one_left_alone(fast_reaper):
    started, finished = run_in(Running()), run_in(Completed())
    for run, expected in ((started, [StateType.CANCELLING]), (finished, [])):
        client = FakeClient([run])

        async def main(client: FakeClient = client, run: FlowRun = run) -> None:
            await Reaper(client)._cancel(run, datetime.now(UTC))  # type: ignore[arg-type]

        asyncio.run(main())
        assert [state.type for _, state in client.states] == expected


def test_with_the_callers_key_the_answer_says_to_repeat_it_and_nothing_is_reaped():
    async def main() -> None:
        result, reaper = await _settle(FakeClient([]), callers_key=True)
        assert isinstance(result, str) and "same Idempotency-Key" in result
        assert reaper.watching == 0

    asyncio.run(main())


def test_nothing_is_looked_up_when_nothing_listens(fast_reaper):
    client = FakeClient([])

    async def main() -> None:
        result, reaper = await _settle(client, callers_key=False, ask=False)
        assert isinstance(result, str)
        await reaper.close()

    asyncio.run(main())
    assert client.reads <= 1  # at most the reaper's first look, never the settling lookup


def test_the_reaper_gives_up_after_its_window(fast_reaper, monkeypatch):
    monkeypatch.setattr(creation, "REAP_SECONDS", 0.05)
    client = FakeClient([])

    async def main() -> None:
        reaper = Reaper(client)  # type: ignore[arg-type]
        reaper.watch("k", datetime.now(UTC))
        await asyncio.sleep(0.3)
        assert reaper.watching == 0

    asyncio.run(main())
    assert client.states == []
