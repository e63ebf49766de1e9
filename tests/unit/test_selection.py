"""Which runs show as which job state when a pool, or one of its work queues, is paused: the
one run's state (deployments.control.jobs.state_of) and the lists' filters
(api_shim.gateway.selection) must agree."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest
from prefect.client.schemas.objects import FlowRun, State, StateType

from api_shim.gateway.selection import slices_for
from deployments.control.jobs import Holds, state_of
from deployments.control.states import JobState

NOW = datetime(2026, 12, 3, 7, 0, tzinfo=UTC)
QUEUES = frozenset({"critical", "high", "normal", "low", "default"})
#: The update pool's `critical` work queue paused, the scan pool paused, backup running.
HOLDS = Holds(
    pools=frozenset({"scan"}),
    work_queues=frozenset({("update", "critical")}),
    queue_names={"backup": QUEUES, "scan": QUEUES, "update": QUEUES},
)


def scheduled(pool: str, queue: str, due: datetime) -> FlowRun:
    return FlowRun(
        flow_id=uuid.uuid4(),
        work_pool_name=pool,
        work_queue_name=queue,
        state=State(type=StateType.SCHEDULED, state_details={"scheduled_time": due}),
    )


def _shown_in(run: FlowRun, state: JobState) -> bool:
    """Whether the run matches one of the slices of `state` over all pools."""
    assert run.state is not None and run.state.state_details.scheduled_time is not None
    due = run.state.state_details.scheduled_time
    for part in slices_for(state, ("backup", "scan", "update"), HOLDS, NOW):
        if part.types is not None and StateType.SCHEDULED not in part.types:
            continue
        if run.work_pool_name not in part.pools:
            continue
        if part.work_queues is not None and run.work_queue_name not in part.work_queues:
            continue
        if part.due_before is not None and due > part.due_before:
            continue
        if part.due_after is not None and due < part.due_after:
            continue
        return True
    return False


@pytest.mark.parametrize(
    ("pool", "queue", "expected"),
    [
        ("update", "critical", JobState.PAUSED),
        ("update", "low", JobState.WAITING),
        ("scan", "normal", JobState.PAUSED),
        ("backup", "critical", JobState.WAITING),
    ],
)
@pytest.mark.parametrize("later", [timedelta(0), timedelta(hours=1)])
def test_a_scheduled_run_shows_in_the_list_of_its_own_state_only(
    pool: str, queue: str, expected: JobState, later: timedelta
) -> None:
    run = scheduled(pool, queue, NOW + later)
    if expected is JobState.WAITING and later:
        expected = JobState.DELAYED
    assert state_of(run, HOLDS, NOW) is expected
    assert [s for s in JobState if _shown_in(run, s)] == [expected]


def test_nothing_paused_costs_one_slice_per_state() -> None:
    holds = Holds(queue_names={"backup": QUEUES, "scan": QUEUES, "update": QUEUES})
    pools = ("backup", "scan", "update")
    assert len(slices_for(JobState.WAITING, pools, holds, NOW)) == 2  # pending + scheduled
    assert slices_for(JobState.PAUSED, pools, holds, NOW)[0].work_queues is None
    assert len(slices_for(JobState.PAUSED, pools, holds, NOW)) == 1  # Prefect's own Paused
