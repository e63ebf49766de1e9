"""The state mapping: every Prefect state type -> the job state the original API speaks of.

Beside the table, what the states mean: which job states are final, and in which Prefect
states a run has started (it has, or is about to get, a process of its own).
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from prefect.client.schemas.objects import StateType


class JobState(StrEnum):
    """A job's state as the original BullMQ-based API reported it (plus `cancelled`)."""

    #: Ready to run: scheduled and due, or pending on a worker.
    WAITING = "waiting"
    #: Due later: scheduled for a future time, or waiting out a retry delay.
    DELAYED = "delayed"
    #: Running now (or being cancelled).
    ACTIVE = "active"
    #: Finished successfully.
    COMPLETED = "completed"
    #: Failed, crashed or timed out after all attempts.
    FAILED = "failed"
    #: Held: paused, or scheduled in a paused pool or a paused work queue.
    PAUSED = "paused"
    #: Cancelled on request (new; BullMQ had no such state).
    CANCELLED = "cancelled"

    @property
    def final(self) -> bool:
        """Whether nothing more happens to a job in this state (unless it is retried)."""
        return self in FINAL


#: The base mapping; `job_state` refines SCHEDULED by time and by a paused pool or work queue.
STATE_TABLE: dict[StateType, JobState] = {
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

#: The job states of Prefect's final state types (tests/unit/test_states.py checks the two agree).
FINAL: frozenset[JobState] = frozenset({JobState.COMPLETED, JobState.FAILED, JobState.CANCELLED})

#: Prefect states in which a run has (or is about to get) a process of its own: cancelling it
#: needs its worker (Cancelling), and it cannot be deleted under the process.
STARTED: frozenset[StateType] = frozenset(
    {StateType.PENDING, StateType.RUNNING, StateType.CANCELLING}
)


def job_state(
    state_type: StateType,
    *,
    scheduled_time: datetime | None = None,
    now: datetime | None = None,
    held: bool = False,
) -> JobState:
    """The job state of a flow run in `state_type`, given when it is due and whether its work
    pool or work queue is paused (`held`): such a run cannot start, whenever it is due."""
    state = STATE_TABLE[state_type]
    if state_type is StateType.SCHEDULED:
        if held:
            return JobState.PAUSED
        if scheduled_time is not None and now is not None and scheduled_time > now:
            return JobState.DELAYED
    return state


def state_types_for(state: JobState) -> list[StateType]:
    """The Prefect state types that can show as `state` (before the SCHEDULED refinement)."""
    types = [t for t, s in STATE_TABLE.items() if s is state]
    if state in (JobState.DELAYED, JobState.PAUSED):
        types.append(StateType.SCHEDULED)
    return types
