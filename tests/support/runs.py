"""Reading flow and task runs back from Prefect, for assertions."""

from __future__ import annotations

import time
from collections.abc import Iterable
from datetime import datetime
from uuid import UUID

from prefect.client.orchestration import SyncPrefectClient
from prefect.client.schemas.filters import (
    FlowRunFilter,
    FlowRunFilterId,
    LogFilter,
    LogFilterFlowRunId,
)
from prefect.client.schemas.objects import State, StateType, TaskRun


def task_runs_of(client: SyncPrefectClient, flow_run_id: UUID) -> list[TaskRun]:
    return client.read_task_runs(
        flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
    )


def task_run_named(
    client: SyncPrefectClient, flow_run_id: UUID, name: str, timeout: float = 30.0
) -> TaskRun:
    """The one task run of `flow_run_id` whose task is called `name`, once its state is final.

    Task-run states reach the database through events: a moment after the flow run's final
    state in embedded mode, and later still in scaled mode (Redis, then the services process).
    """
    deadline = time.monotonic() + timeout
    while True:
        runs = task_runs_of(client, flow_run_id)
        matches = [t for t in runs if t.name.rsplit("-", 1)[0] == name]
        settled = len(matches) == 1 and matches[0].state is not None and matches[0].state.is_final()
        if settled or time.monotonic() > deadline:
            break
        time.sleep(0.25)
    assert len(matches) == 1, [t.name for t in runs]
    return matches[0]


def log_lines(
    client: SyncPrefectClient, flow_run_id: UUID, *, expect: str, timeout: float = 30.0
) -> list[str]:
    """The flow run's log messages, once `expect` is among them (logs arrive in batches)."""
    deadline = time.monotonic() + timeout
    log_filter = LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id]))
    while True:
        lines = [log.message for log in client.read_logs(log_filter=log_filter)]
        if expect in lines or time.monotonic() > deadline:
            return lines
        time.sleep(0.25)


def running_interval(states: Iterable[State]) -> tuple[datetime, datetime]:
    """From the first Running state to the final one."""
    ordered = sorted(states, key=lambda s: s.timestamp)
    start = next(s.timestamp for s in ordered if s.type is StateType.RUNNING)
    end = next(s.timestamp for s in reversed(ordered) if s.is_final())
    return start, end


def max_overlap(intervals: Iterable[tuple[datetime, datetime]]) -> int:
    """The most intervals open at one instant; an end and a start at one instant do not overlap."""
    spans = list(intervals)
    events = sorted(
        [(start, 1) for start, _ in spans] + [(end, -1) for _, end in spans],
        key=lambda e: (e[0], e[1]),
    )
    current = peak = 0
    for _, delta in events:
        current += delta
        peak = max(peak, current)
    return peak
