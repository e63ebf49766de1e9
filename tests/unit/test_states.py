"""The state mapping covers every Prefect state type, refines SCHEDULED and RUNNING, and can be
inverted."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from prefect.client.schemas.objects import TERMINAL_STATES, StateType

from deployments.control.states import (
    STARTED,
    STATE_TABLE,
    JobState,
    job_state,
    state_types_for,
)
from tasks.core.jobs import WAITING_FOR_SERVER_TAG

NOW = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)

#: What MISSION.md's state mapping says, written out once more on purpose.
EXPECTED = {
    StateType.SCHEDULED: JobState.WAITING,
    StateType.PENDING: JobState.WAITING,
    StateType.RUNNING: JobState.ACTIVE,
    StateType.CANCELLING: JobState.ACTIVE,
    StateType.COMPLETED: JobState.COMPLETED,
    StateType.FAILED: JobState.FAILED,
    StateType.CRASHED: JobState.FAILED,
    StateType.PAUSED: JobState.PAUSED,
    StateType.CANCELLED: JobState.CANCELLED,
}


@pytest.mark.parametrize("state_type", list(StateType))
def test_every_prefect_state_type_maps_to_a_job_state(state_type: StateType) -> None:
    assert state_type in STATE_TABLE, f"{state_type} has no job state: add it to STATE_TABLE"
    assert job_state(state_type) is EXPECTED[state_type]


def test_the_table_has_no_extra_entries() -> None:
    assert set(STATE_TABLE) == set(StateType)
    assert STATE_TABLE == EXPECTED


def test_scheduled_for_later_is_delayed() -> None:
    later = NOW + timedelta(seconds=30)
    assert job_state(StateType.SCHEDULED, scheduled_time=later, now=NOW) is JobState.DELAYED


@pytest.mark.parametrize("offset", [timedelta(0), timedelta(seconds=-1), timedelta(days=-3)])
def test_scheduled_and_due_is_waiting(offset: timedelta) -> None:
    due = NOW + offset
    assert job_state(StateType.SCHEDULED, scheduled_time=due, now=NOW) is JobState.WAITING


def test_scheduled_without_a_time_is_waiting() -> None:
    assert job_state(StateType.SCHEDULED, now=NOW) is JobState.WAITING


@pytest.mark.parametrize("offset", [timedelta(hours=1), timedelta(hours=-1)])
def test_scheduled_in_a_paused_pool_or_work_queue_is_paused(offset: timedelta) -> None:
    state = job_state(StateType.SCHEDULED, scheduled_time=NOW + offset, now=NOW, held=True)
    assert state is JobState.PAUSED


@pytest.mark.parametrize("state_type", [t for t in StateType if t is not StateType.SCHEDULED])
def test_only_scheduled_is_refined_by_time_and_holds(state_type: StateType) -> None:
    later = NOW + timedelta(hours=1)
    refined = job_state(state_type, scheduled_time=later, now=NOW, held=True)
    assert refined is EXPECTED[state_type]


@pytest.mark.parametrize("state_type", list(StateType))
def test_only_a_running_run_waiting_for_its_server_is_waiting(state_type: StateType) -> None:
    # Cancelling with the tag still on (its run has not left the wait yet) is being cancelled,
    # `active`; a crashed one that kept it is failed.
    tags = ["job:backup:manual", WAITING_FOR_SERVER_TAG]
    expected = JobState.WAITING if state_type is StateType.RUNNING else EXPECTED[state_type]
    assert job_state(state_type, tags=tags) is expected
    assert job_state(state_type, tags=["job:backup:manual"]) is EXPECTED[state_type]


def _all_mappings() -> list[tuple[StateType, JobState]]:
    """Every (state type, job state) pair `job_state` can produce."""
    contexts = [
        {},
        {"scheduled_time": NOW + timedelta(minutes=5), "now": NOW},
        {"scheduled_time": NOW - timedelta(minutes=5), "now": NOW},
        {"held": True},
        {"tags": [WAITING_FOR_SERVER_TAG]},
    ]
    return sorted(
        {(t, job_state(t, **ctx)) for t in StateType for ctx in contexts},  # type: ignore[arg-type]
        key=str,
    )


@pytest.mark.parametrize(("state_type", "state"), _all_mappings())
def test_state_types_for_finds_every_state_type_that_shows_as_a_state(
    state_type: StateType, state: JobState
) -> None:
    assert state_type in state_types_for(state)


@pytest.mark.parametrize("state", list(JobState))
def test_state_types_for_only_returns_types_that_can_show_as_the_state(state: JobState) -> None:
    producible = {t for t, s in _all_mappings() if s is state}
    assert producible, f"no Prefect state shows as {state}"
    assert set(state_types_for(state)) == producible
    assert len(state_types_for(state)) == len(set(state_types_for(state)))


def test_state_types_for_examples() -> None:
    assert set(state_types_for(JobState.WAITING)) == {
        StateType.SCHEDULED,
        StateType.PENDING,
        StateType.RUNNING,
    }
    assert set(state_types_for(JobState.ACTIVE)) == {StateType.RUNNING, StateType.CANCELLING}
    assert state_types_for(JobState.DELAYED) == [StateType.SCHEDULED]
    assert set(state_types_for(JobState.FAILED)) == {StateType.FAILED, StateType.CRASHED}
    assert set(state_types_for(JobState.PAUSED)) == {StateType.PAUSED, StateType.SCHEDULED}


@pytest.mark.parametrize("state_type", list(StateType))
def test_a_job_is_final_exactly_when_prefect_says_its_run_is(state_type: StateType) -> None:
    assert job_state(state_type).final is (state_type in TERMINAL_STATES)


def test_a_started_run_is_neither_final_nor_due() -> None:
    assert STARTED == {StateType.PENDING, StateType.RUNNING, StateType.CANCELLING}
    assert not STARTED & set(TERMINAL_STATES)
    assert StateType.SCHEDULED not in STARTED
