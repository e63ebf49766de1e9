"""A create without an answer ends with the job found, or a 503 and no job that runs."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any
from uuid import uuid4

import httpx
import pytest
from prefect.client.schemas.objects import FlowRun, StateType
from prefect.states import Completed, Running, Scheduled

from api_shim.gateway import Gateway, OrchestratorUnavailable, OutcomeUnknown, creation
from api_shim.gateway.creation import Reaper, settle
from tasks.core.jobs import JobType


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


def _answer(status: int) -> httpx.HTTPStatusError:
    request = httpx.Request("POST", "http://prefect/api/deployments/x/create_flow_run")
    response = httpx.Response(status, request=request, text='{"exception_message":"boom"}')
    return httpx.HTTPStatusError(f"{status}", request=request, response=response)


@pytest.mark.parametrize(
    ("status", "create", "raised"),
    [
        (500, True, OutcomeUnknown),
        (504, True, OutcomeUnknown),
        (503, True, OrchestratorUnavailable),
        (500, False, OrchestratorUnavailable),
    ],
)
def test_a_create_that_failed_mid_request_has_an_unknown_outcome(status, create, raised):
    """Prefect failing mid-create (500, e.g. its Redis unreachable) may have committed the run,
    so the gateway settles it; a 503 is Prefect's refusal, and reads are never settled."""

    async def failing() -> None:
        raise _answer(status)

    async def main() -> None:
        gateway = Gateway(FakeClient([]), "http://prefect/api", timeout=5)  # type: ignore[arg-type]
        with pytest.raises(OrchestratorUnavailable) as caught:
            await gateway.call("create_flow_run", failing(), create=create)
        assert type(caught.value) is raised
        assert str(status) in caught.value.message

    asyncio.run(main())


def test_a_create_answered_500_is_a_503_saying_the_job_was_not_created(monkeypatch, fast_reaper):
    client = FakeClient([])

    async def main() -> None:
        gateway = Gateway(client, "http://prefect/api", timeout=5)  # type: ignore[arg-type]

        async def listening() -> bool:
            return True

        async def create(*_: Any) -> FlowRun:
            return await gateway.call("create_flow_run", _raise(_answer(500)), create=True)

        monkeypatch.setattr(gateway, "_listening", listening)
        monkeypatch.setattr(gateway, "_create", create)
        with pytest.raises(OrchestratorUnavailable) as caught:
            await gateway.enqueue(
                JobType.SCAN_QUICK, {}, user_id="u", priority=None, idempotency_key=None
            )
        assert "failed with 500" in caught.value.message
        assert "the job was not created" in caught.value.message
        assert client.reads >= 1  # looked for the run before saying so
        await gateway.reaper.close()

    asyncio.run(main())


async def _raise(exc: Exception) -> FlowRun:
    raise exc
