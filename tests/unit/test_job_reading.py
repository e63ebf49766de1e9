"""A job's attempts from its task runs, and when a finished job can be kept as it is."""

from __future__ import annotations

import uuid

from prefect.client.schemas.objects import FlowRun, State, StateType, TaskRun

from deployments.control.jobs import attempts_of, settled


def flow_run(state: StateType | None, run_count: int = 1) -> FlowRun:
    return FlowRun(
        flow_id=uuid.uuid4(),
        run_count=run_count,
        state=None if state is None else State(type=state),
    )


def task_run(
    run: FlowRun, state: StateType, run_count: int, flow_run_run_count: int = 1
) -> TaskRun:
    return TaskRun(
        flow_run_id=run.id,
        task_key="scan_server",
        dynamic_key="0",
        run_count=run_count,
        flow_run_run_count=flow_run_run_count,
        state=State(type=state),
    )


def test_attempts_are_the_most_tries_of_a_task_per_run_of_the_flow() -> None:
    run = flow_run(StateType.FAILED, run_count=2)
    tasks = [
        task_run(run, StateType.FAILED, 4, flow_run_run_count=1),
        task_run(run, StateType.COMPLETED, 1, flow_run_run_count=1),
        task_run(run, StateType.FAILED, 2, flow_run_run_count=2),
    ]
    assert attempts_of(run, tasks) == 6


def test_a_run_with_no_task_recorded_counts_one_attempt_per_run() -> None:
    assert attempts_of(flow_run(StateType.FAILED, run_count=2), []) == 2
    assert attempts_of(flow_run(StateType.SCHEDULED, run_count=0), []) == 0


def test_a_failed_run_whose_last_try_is_not_recorded_yet_is_not_settled() -> None:
    # The flow run's Failed state is set through the API; the task run's last try reaches
    # Prefect as events, recorded a moment later: until then it reads "awaiting retry".
    run = flow_run(StateType.FAILED)
    behind = [task_run(run, StateType.SCHEDULED, 3)]
    assert attempts_of(run, behind) == 3
    assert not settled(run, behind)

    caught_up = [task_run(run, StateType.FAILED, 4)]
    assert attempts_of(run, caught_up) == 4
    assert settled(run, caught_up)


def test_only_the_latest_run_of_the_flow_decides() -> None:
    run = flow_run(StateType.COMPLETED, run_count=2)
    earlier_left_running = task_run(run, StateType.RUNNING, 1, flow_run_run_count=1)
    latest = task_run(run, StateType.COMPLETED, 1, flow_run_run_count=2)
    assert settled(run, [earlier_left_running, latest])
    assert not settled(run, [latest, task_run(run, StateType.RUNNING, 1, flow_run_run_count=2)])


def test_a_run_that_has_not_ended_is_never_settled() -> None:
    for state in (None, StateType.SCHEDULED, StateType.PENDING, StateType.RUNNING):
        assert not settled(flow_run(state), [])
    assert settled(flow_run(StateType.FAILED), [])  # failed before any task: nothing to come
