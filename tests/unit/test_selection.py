"""Which runs show as which job state when a pool, or one of its work queues, is paused, and
when a Running run waits for its server: the one run's state
(deployments.control.jobs.state_of) and the lists' filters (deployments.control.selection) must
agree."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest
from prefect.client.schemas.objects import FlowRun, State, StateType

from deployments.control.catalogue import server_tag, user_tag
from deployments.control.jobs import Holds, state_of
from deployments.control.selection import (
    Scope,
    Slice,
    needs_waiting_for_server,
    slices_for,
    waiting_for_server,
)
from deployments.control.states import JobState
from tasks.core.jobs import WAITING_FOR_SERVER_TAG

NOW = datetime(2026, 12, 3, 7, 0, tzinfo=UTC)
QUEUES = frozenset({"critical", "high", "normal", "low", "default"})
ALL_POOLS = ("backup", "scan", "update")
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


def running(pool: str, *tags: str) -> FlowRun:
    return FlowRun(
        flow_id=uuid.uuid4(),
        work_pool_name=pool,
        work_queue_name="normal",
        tags=list(tags),
        state=State(type=StateType.RUNNING),
    )


def _matches(run: FlowRun, part: Slice) -> bool:
    """Whether Prefect would find the run through the slice's filter."""
    assert run.state is not None
    due = run.state.state_details.scheduled_time
    return (
        (part.types is None or run.state.type in part.types)
        and run.work_pool_name in part.pools
        and (part.work_queues is None or run.work_queue_name in part.work_queues)
        and (part.due_before is None or (due is not None and due <= part.due_before))
        and (part.due_after is None or (due is not None and due >= part.due_after))
        and set(part.tags) <= set(run.tags)
        and (part.ids is None or run.id in part.ids)
        and run.id not in part.excluded
    )


def _shown_in(run: FlowRun, state: JobState, waiting: tuple[FlowRun, ...] = ()) -> bool:
    """Whether the run matches one of the slices of `state` over all pools, given the runs
    the gateway read as waiting for their server."""
    parts = slices_for(state, ALL_POOLS, HOLDS, NOW, [r.id for r in waiting])
    found = [part for part in parts if _matches(run, part)]
    assert len(found) <= 1, f"slices of {state} overlap: {found}"
    return bool(found)


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


@pytest.mark.parametrize("tagged", [True, False])
def test_a_running_run_shows_in_the_list_of_its_own_state_only(tagged: bool) -> None:
    run = running("backup", "job:backup:manual", *([WAITING_FOR_SERVER_TAG] if tagged else []))
    other = running("update", WAITING_FOR_SERVER_TAG)
    # What the gateway reads first: the tagged Running runs (`waiting_for_server`).
    waiting = tuple(r for r in (run, other) if _matches(r, waiting_for_server(ALL_POOLS)))
    expected = JobState.WAITING if tagged else JobState.ACTIVE
    assert state_of(run, HOLDS, NOW) is expected
    assert [s for s in JobState if _shown_in(run, s, waiting)] == [expected]


def test_a_tag_that_came_or_went_since_the_read_never_lists_a_run_twice() -> None:
    # Read as waiting, then given its slot (tag gone): in neither list until the next read.
    got_it = running("backup", "job:backup:manual")
    assert [s for s in JobState if _shown_in(got_it, s, (got_it,))] == []
    # Tagged after the read: still active, as it was when read.
    began_waiting = running("backup", WAITING_FOR_SERVER_TAG)
    assert [s for s in JobState if _shown_in(began_waiting, s, ())] == [JobState.ACTIVE]


def test_only_waiting_and_active_need_the_read_and_none_waiting_costs_no_slice() -> None:
    assert {s for s in JobState if needs_waiting_for_server(s)} == {
        JobState.WAITING,
        JobState.ACTIVE,
    }
    assert not needs_waiting_for_server(None)
    holds = Holds(queue_names={"backup": QUEUES, "scan": QUEUES, "update": QUEUES})
    assert len(slices_for(JobState.WAITING, ALL_POOLS, holds, NOW)) == 2
    assert len(slices_for(JobState.WAITING, ALL_POOLS, holds, NOW, [uuid.uuid4()])) == 3
    (active,) = slices_for(JobState.ACTIVE, ALL_POOLS, holds, NOW)
    assert active.excluded == () and active.flow_run_filter(None).id is None


def test_the_waiting_filters_add_the_tag_to_the_users_and_cut_by_id() -> None:
    holds = Holds(queue_names={"backup": QUEUES, "scan": QUEUES, "update": QUEUES})
    ids = [uuid.uuid4(), uuid.uuid4()]
    scope = Scope("alice", frozenset({"s1"}))
    parts = slices_for(JobState.WAITING, ALL_POOLS, holds, NOW, ids)
    (tagged,) = [part for part in parts if part.ids is not None]
    wanted = tagged.flow_run_filter(scope)
    assert wanted.tags is not None and wanted.tags.operator.value == "and_"
    assert wanted.tags.all_ == [user_tag("alice"), WAITING_FOR_SERVER_TAG]
    assert wanted.tags.any_ == [server_tag("s1")]
    assert wanted.id is not None and wanted.id.any_ == ids and wanted.id.not_any_ is None
    admins = tagged.flow_run_filter(None)
    assert admins.tags is not None and admins.tags.all_ == [WAITING_FOR_SERVER_TAG]
    (active,) = slices_for(JobState.ACTIVE, ALL_POOLS, holds, NOW, ids)
    rest = active.flow_run_filter(scope)
    assert rest.id is not None and rest.id.not_any_ == ids and rest.id.any_ is None
    assert rest.tags is not None and rest.tags.all_ == [user_tag("alice")]
