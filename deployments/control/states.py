"""The state mapping: every Prefect state type -> the job state the original API speaks of.

Beside the table, what the states mean: which job states are final, and in which Prefect
states a run has started (it has, or is about to get, a process of its own). Two refinements
of the table, in `job_state`: SCHEDULED by time and by what is paused, RUNNING by the tag of a
run waiting for its server (`WAITING_FOR_SERVER_TAG`).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from enum import StrEnum

from prefect.client.schemas.objects import StateType

from tasks.core.jobs import WAITING_FOR_SERVER_TAG


class JobState(StrEnum):
    """A job's state as the original BullMQ-based API reported it (plus `cancelled`)."""

    #: Ready to run: scheduled and due, pending on a worker, or running but waiting for its
    #: server while another job has it (tagged `WAITING_FOR_SERVER_TAG`).
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


#: The base mapping; `job_state` refines SCHEDULED by time and by a paused pool or work queue,
#: and RUNNING by the waiting-for-server tag.
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

#: The job state of a Running run with `WAITING_FOR_SERVER_TAG`: it holds a process but has not
#: begun its work, so it is not `active` (deployments/control/selection.py filters by the same
#: rule).
WAITING_FOR_SERVER = JobState.WAITING


def job_state(
    state_type: StateType,
    *,
    scheduled_time: datetime | None = None,
    now: datetime | None = None,
    held: bool = False,
    tags: Iterable[str] = (),
) -> JobState:
    """The job state of a flow run in `state_type`, given when it is due, whether its work
    pool or work queue is paused (`held`): such a run cannot start, whenever it is due; and
    its `tags`: a Running run waiting for its server has not begun its work."""
    state = STATE_TABLE[state_type]
    if state_type is StateType.SCHEDULED:
        if held:
            return JobState.PAUSED
        if scheduled_time is not None and now is not None and scheduled_time > now:
            return JobState.DELAYED
    if state_type is StateType.RUNNING and WAITING_FOR_SERVER_TAG in tags:
        return WAITING_FOR_SERVER
    return state


def state_types_for(state: JobState) -> list[StateType]:
    """The Prefect state types that can show as `state` (before the refinements)."""
    types = [t for t, s in STATE_TABLE.items() if s is state]
    if state in (JobState.DELAYED, JobState.PAUSED):
        types.append(StateType.SCHEDULED)
    if state is WAITING_FOR_SERVER:
        types.append(StateType.RUNNING)
    return types
