"""The crash automations: one pair per pool, lock durations that heartbeats can meet."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from prefect.client.schemas.objects import FlowRun
from prefect.events.schemas.automations import AutomationCore
from prefect.states import Crashed, Running

from deployments.control.automations import (
    CRASH_FOUND_EVENT,
    GAVE_UP_NAME,
    WATCH_EVENT,
    check_supervision,
    crash_found_events,
    lock_duration,
    rerun_name,
    stalled_automation,
    wanted_automations,
    watch_events,
)
from deployments.control.queues import QUEUES, QUEUES_BY_NAME
from tasks.core.settings import SupervisionSettings


def test_the_queue_table_gives_the_lock_durations_unless_overridden() -> None:
    settings = SupervisionSettings(lock_durations={"scan": 45})
    assert lock_duration(settings, QUEUES_BY_NAME["scan"]) == timedelta(seconds=45)
    assert lock_duration(settings, QUEUES_BY_NAME["backup"]) == timedelta(minutes=5)


@pytest.mark.parametrize(
    "fields",
    [
        {"lock_durations": {"backup": 40}},
        {"lock_durations": {"nope": 60}},
        {"heartbeat_seconds": 5},
    ],
    ids=["shorter-than-heartbeat-plus-slack", "unknown-queue", "heartbeat-below-prefect-floor"],
)
def test_settings_that_cannot_work_are_refused(fields: dict[str, object]) -> None:
    # ValidationError (a ValueError) for the heartbeat, check_supervision's for the rest.
    with pytest.raises(ValueError):
        check_supervision(SupervisionSettings(**fields))  # type: ignore[arg-type]


def test_every_pool_gets_a_stalled_and_a_rerun_automation_and_one_gives_up() -> None:
    ids = {queue.name: [uuid.uuid4()] for queue in QUEUES}
    automations = wanted_automations(ids, SupervisionSettings(crash_attempts=2))
    names = [a.name for a in automations]
    assert len(names) == len(set(names)) == 2 * len(QUEUES) + 1
    rerun = next(a for a in automations if a.name.endswith("re-run crashed backup runs"))
    assert rerun.trigger.match.get("prefect.run-count") == ["0", "1"]  # type: ignore[union-attr]
    gave_up = next(a for a in automations if a.name == GAVE_UP_NAME)
    counts = gave_up.trigger.match.get("prefect.run-count")  # type: ignore[union-attr]
    assert counts[:2] == ["2", "3"] and "1" not in counts  # type: ignore[index,operator]
    stalled = next(a for a in automations if a.name.endswith("crash stalled backup runs"))
    assert stalled.trigger.within == timedelta(minutes=5)  # type: ignore[union-attr]


def test_a_watched_run_is_covered_by_its_pool_stalled_automation_like_a_heartbeat() -> None:
    """The bootstrap's watch event starts the stalled-run window of the run's deployment only."""
    from prefect.server.events.schemas.automations import EventTrigger as ServerTrigger
    from prefect.server.events.schemas.events import Event as ServerEvent

    deployment_id, other_id = uuid.uuid4(), uuid.uuid4()
    run = FlowRun(
        flow_id=uuid.uuid4(), deployment_id=deployment_id, name="backup:manual x", state=Running()
    )
    stray = FlowRun(flow_id=uuid.uuid4(), name="no deployment", state=Running())
    (event,) = watch_events([run, stray])
    received = ServerEvent.model_validate(event.model_dump(mode="json")).receive()
    assert received.resource.id == f"prefect.flow-run.{run.id}"

    def stalled_trigger(ids: list[uuid.UUID]) -> ServerTrigger:
        automation = stalled_automation(QUEUES_BY_NAME["backup"], ids, SupervisionSettings())
        return ServerTrigger.model_validate(automation.trigger.model_dump())

    trigger = stalled_trigger([deployment_id])
    assert trigger.covers(received) and trigger.starts_after(WATCH_EVENT)
    assert trigger.starts_after("prefect.flow-run.heartbeat")
    # Its state changes count as signs of life, as heartbeats do.
    assert trigger.expects("prefect.flow-run.Running") and trigger.expects(
        "prefect.flow-run.Pending"
    )
    assert not stalled_trigger([other_id]).covers(received)


@pytest.mark.parametrize(("run_count", "by"), [(1, "re-run"), (3, "gave-up")])
def test_a_crash_found_at_start_is_taken_by_the_automation_its_run_count_calls_for(
    run_count: int, by: str
) -> None:
    """The start's crash-found event matches what Prefect's own Crashed event would: the re-run
    automation of the run's pool below the attempts, the gave-up one from the last on."""
    from prefect.server.events.schemas.automations import EventTrigger as ServerTrigger
    from prefect.server.events.schemas.events import Event as ServerEvent

    settings = SupervisionSettings(crash_attempts=3)
    run = FlowRun(
        flow_id=uuid.uuid4(),
        name="backup:manual x",
        run_count=run_count,
        work_pool_id=uuid.uuid4(),
        work_pool_name="backup",
        state=Crashed(),
    )
    unpooled = FlowRun(flow_id=uuid.uuid4(), name="no pool", state=Crashed())
    (event,) = crash_found_events([run, unpooled])
    received = ServerEvent.model_validate(event.model_dump(mode="json")).receive()

    def covers(automation: AutomationCore) -> bool:
        trigger = ServerTrigger.model_validate(automation.trigger.model_dump())
        return trigger.covers(received) and trigger.expects(CRASH_FOUND_EVENT)

    ids = {queue.name: [uuid.uuid4()] for queue in QUEUES}
    taken = {a.name for a in wanted_automations(ids, settings) if covers(a)}
    wanted = rerun_name(QUEUES_BY_NAME["backup"]) if by == "re-run" else GAVE_UP_NAME
    assert taken == {wanted}
