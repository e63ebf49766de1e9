"""The waiting-for-server tag of tasks/server_slot.py: on the run only while it waits for the
slot, off once the slot is held or the wait ends otherwise (a cancel), and never the end of a
job when Prefect refuses it. Prefect's slot and client are fakes; the real ones are
tests/integration/test_one_job_per_server.py's."""

from __future__ import annotations

import logging
import uuid
from types import SimpleNamespace

import httpx
import pytest
from prefect.client.schemas.objects import FlowRun
from prefect.concurrency.asyncio import ConcurrencySlotAcquisitionError

from tasks import server_slot as slot_module
from tasks.core.inventory import Server
from tasks.core.jobs import WAITING_FOR_SERVER_TAG
from tasks.progress import Progress
from tasks.server_slot import server_slot

SERVER = Server.model_validate(
    {
        "id": str(uuid.uuid4()),
        "name": "web-1",
        "host": "127.0.0.1",
        "username": "mm",
        "private_key_file": "/keys/web-1",
    }
)


class Quiet(Progress):
    """Progress that sends nothing to Prefect."""

    def _record(self, percent: float, message: str) -> None:
        pass


class FakeClient:
    """Prefect's sync client, for one run's tags; `fail` makes every call raise it."""

    def __init__(self, tags: list[str]) -> None:
        self.tags = tags
        #: The tags of each update, in order.
        self.updates: list[list[str]] = []
        self.fail: Exception | None = None

    def __enter__(self) -> FakeClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        pass

    def read_flow_run(self, run_id: uuid.UUID) -> SimpleNamespace:
        if self.fail is not None:
            raise self.fail
        return SimpleNamespace(tags=list(self.tags))

    def update_flow_run(self, run_id: uuid.UUID, *, tags: list[str]) -> None:
        self.updates.append(list(tags))
        self.tags = list(tags)


def refused(status: int) -> ConcurrencySlotAcquisitionError:
    """What Prefect's `concurrency` raises for an answer `status` to its acquisition."""
    request = httpx.Request("POST", "http://prefect/api/v2/concurrency_limits/increment-with-lease")
    answer = httpx.Response(status, request=request)
    try:
        raise httpx.HTTPStatusError("refused", request=request, response=answer)
    except httpx.HTTPStatusError as exc:
        try:
            raise ConcurrencySlotAcquisitionError("Unable to acquire concurrency slots") from exc
        except ConcurrencySlotAcquisitionError as error:
            return error


class Slot:
    """The server's slot: `busy` makes the first try refused (423); `wait_fails` ends the wait."""

    def __init__(self, *, busy: bool, wait_fails: BaseException | None = None) -> None:
        self.busy = busy
        self.wait_fails = wait_fails
        #: Whether this job holds the slot now.
        self.held = False
        self.max_retries: int | None = None

    def hold(self, name: str, max_retries: int | None = None) -> Slot:
        self.max_retries = max_retries
        return self

    # A class, not a generator: a generator's cleanup would run when it is dropped, which
    # Prefect's lease does not do.
    def __enter__(self) -> None:
        if self.max_retries == 0 and self.busy:
            raise refused(423)
        if self.max_retries is None and self.wait_fails is not None:
            raise self.wait_fails
        self.held = True

    def __exit__(self, *exc_info: object) -> None:
        self.held = False


@pytest.fixture
def client() -> FakeClient:
    return FakeClient(["job:backup:manual", f"server:{SERVER.id}"])


def _patch(
    monkeypatch: pytest.MonkeyPatch, client: FakeClient, slot: Slot, tags: list[str]
) -> None:
    run = FlowRun(flow_id=uuid.uuid4(), tags=tags)
    context = SimpleNamespace(flow_run=run)
    monkeypatch.setattr(slot_module, "ensure_limit", lambda name: None)
    monkeypatch.setattr(slot_module, "_hold", slot.hold)
    monkeypatch.setattr(slot_module, "get_client", lambda **kwargs: client)
    monkeypatch.setattr(slot_module, "FlowRunContext", SimpleNamespace(get=lambda: context))
    monkeypatch.setattr(slot_module, "get_run_logger", lambda: logging.getLogger("test.slot"))


def test_a_free_slot_is_taken_without_a_tag_or_a_request(
    monkeypatch: pytest.MonkeyPatch, client: FakeClient
) -> None:
    slot = Slot(busy=False)
    _patch(monkeypatch, client, slot, client.tags)
    with server_slot(SERVER, Quiet()):
        assert slot.held
    assert client.updates == []


def test_a_busy_slot_tags_the_run_while_it_waits_and_untags_it_once_held(
    monkeypatch: pytest.MonkeyPatch, client: FakeClient
) -> None:
    before = list(client.tags)
    slot = Slot(busy=True)
    _patch(monkeypatch, client, slot, before)
    with server_slot(SERVER, Quiet()):
        assert slot.held
        assert client.tags == before  # off before the job's work begins, the others kept
    assert client.updates == [[*before, WAITING_FOR_SERVER_TAG], before]


def test_a_cancel_while_waiting_takes_the_tag_off(
    monkeypatch: pytest.MonkeyPatch, client: FakeClient
) -> None:
    before = list(client.tags)
    slot = Slot(busy=True, wait_fails=KeyboardInterrupt())
    _patch(monkeypatch, client, slot, before)
    with pytest.raises(KeyboardInterrupt), server_slot(SERVER, Quiet()):
        pytest.fail("the body ran without the slot")
    assert client.updates == [[*before, WAITING_FOR_SERVER_TAG], before]


def test_prefect_refusing_the_tag_is_a_warning_not_the_end_of_the_job(
    monkeypatch: pytest.MonkeyPatch, client: FakeClient, caplog: pytest.LogCaptureFixture
) -> None:
    slot = Slot(busy=True)
    _patch(monkeypatch, client, slot, client.tags)
    client.fail = httpx.ConnectError("connection refused")
    ran = False
    with caplog.at_level(logging.WARNING, "test.slot"), server_slot(SERVER, Quiet()):
        ran = slot.held
    assert ran
    assert [r.getMessage() for r in caplog.records] == [
        f"could not add the tag {WAITING_FOR_SERVER_TAG}: connection refused",
        f"could not remove the tag {WAITING_FOR_SERVER_TAG}: connection refused",
    ]


def test_a_tag_left_by_a_killed_try_goes_when_the_slot_is_free(
    monkeypatch: pytest.MonkeyPatch, client: FakeClient
) -> None:
    before = list(client.tags)
    client.tags = [*before, WAITING_FOR_SERVER_TAG]
    slot = Slot(busy=False)
    _patch(monkeypatch, client, slot, client.tags)
    with server_slot(SERVER, Quiet()):
        assert client.tags == before


def test_the_slot_is_given_back_when_the_untagging_is_interrupted(
    monkeypatch: pytest.MonkeyPatch, client: FakeClient
) -> None:
    slot = Slot(busy=True)
    _patch(monkeypatch, client, slot, client.tags)
    update = client.update_flow_run

    def interrupted(run_id: uuid.UUID, *, tags: list[str]) -> None:
        if WAITING_FOR_SERVER_TAG not in tags:
            assert slot.held
            raise KeyboardInterrupt  # a cancel, the moment the slot came
        update(run_id, tags=tags)

    monkeypatch.setattr(client, "update_flow_run", interrupted)
    with pytest.raises(KeyboardInterrupt), server_slot(SERVER, Quiet()):
        pytest.fail("the body ran")
    assert not slot.held


def test_a_first_try_that_fails_for_another_reason_than_a_taken_slot_is_not_a_wait(
    monkeypatch: pytest.MonkeyPatch, client: FakeClient
) -> None:
    slot = Slot(busy=False)
    _patch(monkeypatch, client, slot, tags=[])

    def broken(name: str, max_retries: int | None = None) -> Slot:
        raise refused(500)

    monkeypatch.setattr(slot_module, "_hold", broken)
    with pytest.raises(ConcurrencySlotAcquisitionError), server_slot(SERVER, Progress()):
        pass
    assert client.updates == []  # never tagged as waiting
