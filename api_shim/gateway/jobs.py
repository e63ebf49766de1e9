"""Flow runs -> the API's `Job`: parameters, mapped state, progress, attempts, result.

A page of jobs costs a fixed number of queries whatever its size: one for the pools, one per
200 artifacts (progress and results together) and one per 200 task runs.
"""

from __future__ import annotations

import asyncio
import json
from collections import defaultdict
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from prefect.client.orchestration import PrefectClient
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    ArtifactFilterType,
    FlowRunFilter,
    FlowRunFilterId,
)
from prefect.client.schemas.objects import Artifact, FlowRun, StateType, TaskRun
from prefect.client.schemas.sorting import ArtifactSort, TaskRunSort

from api_shim.schemas import Job, JobData
from deployments.control.catalogue import JOB_TYPE_TAG_PREFIX
from deployments.control.states import JobState, job_state
from tasks.outcome import FAILURE, full_reason

#: One try plus three retries (the tasks' `retries=3`).
MAX_ATTEMPTS = 4
#: The most rows Prefect returns for one read (PREFECT_API_DEFAULT_LIMIT).
PAGE = 200
#: Ids of a job besides its job id, by parameter name.
ID_PARAMETERS = ("backup_id", "scan_id", "update_id")


def epoch_ms(moment: datetime | None) -> int | None:
    return None if moment is None else int(moment.timestamp() * 1000)


def state_of(run: FlowRun, paused_pools: set[str], now: datetime) -> JobState:
    """The job state of a run, through the one state table."""
    if run.state is None:
        return job_state(StateType.PENDING)
    return job_state(
        run.state.type,
        scheduled_time=run.state.state_details.scheduled_time or run.next_scheduled_start_time,
        now=now,
        pool_paused=run.work_pool_name in paused_pools,
    )


def job_name(run: FlowRun) -> str:
    """The job type, from the run's tag (or its `job_type` parameter)."""
    for tag in run.tags:
        if tag.startswith(JOB_TYPE_TAG_PREFIX):
            return tag.removeprefix(JOB_TYPE_TAG_PREFIX)
    return str(run.parameters.get("job_type") or run.flow_id)


def job_data(run: FlowRun) -> JobData:
    params = run.parameters

    def text(name: str) -> str | None:
        value = params.get(name)
        return None if value is None else str(value)

    options = params.get("options")
    return JobData(
        server_id=text("server_id"),
        backup_id=text("backup_id"),
        scan_id=text("scan_id"),
        update_id=text("update_id"),
        user_id=text("user_id"),
        options=options if isinstance(options, dict) else None,
    )


def attempts_of(run: FlowRun, task_runs: Sequence[TaskRun]) -> int:
    """Tries so far: per run of the flow, the most tries of one of its tasks (at least one).

    Task retries leave the flow run's `run_count` at 1 (docs/DESIGN.md, "Prefect behaviour the
    code relies on"); a retry through the API runs the flow again, and its tasks'
    `flow_run_run_count` says which run they belong to.
    """
    most: dict[int, int] = defaultdict(int)
    for task_run in task_runs:
        key = task_run.flow_run_run_count or 1
        most[key] = max(most[key], task_run.run_count)
    return sum(max(1, most.get(n, 0)) for n in range(1, run.run_count + 1)) if run.run_count else 0


def settled(run: FlowRun, task_runs: Sequence[TaskRun]) -> bool:
    """Whether the run's job can now change only with a new state of the run itself.

    Prefect records task runs from their events, a moment after the flow run's own state: a
    run that has just failed may still show its last try as awaiting a retry (`attempts` one
    short). Its job is settled once the run is final and so is every task run recorded for its
    latest run. Not seen here: a task run with no event recorded at all yet (it has had one try,
    which `attempts_of` counts already, unless its events lag by more than the 5 s before a
    retry). A run killed mid-task leaves its task run Running for good: its job is never
    settled, only read afresh each time.
    """
    if run.state is None or not run.state.is_final():
        return False
    latest = run.run_count or 1
    return all(
        task_run.state is not None and task_run.state.is_final()
        for task_run in task_runs
        if (task_run.flow_run_run_count or 1) == latest
    )


class JobReader:
    """Builds `Job`s for a batch of flow runs with a bounded number of queries.

    `admin`: failure reasons in full, with the command text and output that the runs' state
    messages leave out (`tasks.outcome.full_reason`); users get the state message alone.
    """

    def __init__(self, client: PrefectClient, *, admin: bool) -> None:
        self.client = client
        self.admin = admin
        #: The runs read so far whose job is `settled`.
        self.settled: set[UUID] = set()

    async def jobs(self, runs: Sequence[FlowRun], paused_pools: set[str]) -> list[Job]:
        if not runs:
            return []
        ids = [run.id for run in runs]
        (progress, results, failures), task_runs = await asyncio.gather(
            self._artifacts(ids), self._task_runs(ids)
        )
        now = datetime.now(UTC)
        self.settled.update(run.id for run in runs if settled(run, task_runs.get(run.id, [])))
        return [
            self._job(
                run,
                paused_pools,
                now,
                progress,
                results,
                task_runs.get(run.id, []),
                failures.get(run.id, []),
            )
            for run in runs
        ]

    def _job(
        self,
        run: FlowRun,
        paused_pools: set[str],
        now: datetime,
        progress: dict[UUID, float],
        results: dict[UUID, dict[str, Any]],
        task_runs: list[TaskRun],
        failures: list[Any],
    ) -> Job:
        state = state_of(run, paused_pools, now)
        reason = run.state.message if run.state is not None else None
        if reason is not None and self.admin:
            reason = full_reason(reason, failures)
        return Job(
            id=str(run.id),
            name=job_name(run),
            data=job_data(run),
            state=state,
            progress=progress.get(run.id, 0.0),
            attempts=attempts_of(run, task_runs),
            max_attempts=MAX_ATTEMPTS,
            timestamp=epoch_ms(run.created) or 0,
            processed_on=epoch_ms(run.start_time),
            finished_on=epoch_ms(run.end_time),
            result=results.get(run.id),
            queue=run.work_pool_name,
            failed_reason=reason if state is JobState.FAILED else None,
        )

    async def _artifacts(
        self, ids: list[UUID]
    ) -> tuple[dict[UUID, float], dict[UUID, dict[str, Any]], dict[UUID, list[Any]]]:
        """Each run's progress (its newest progress artifact: a re-run starts a new one),
        result (its newest keyless table artifact, tasks/outcome.py) and, for an admin, the
        data of its failure artifacts, newest first; in one query."""
        progress: dict[UUID, float] = {}
        results: dict[UUID, dict[str, Any]] = {}
        failures: dict[UUID, list[Any]] = defaultdict(list)
        for artifact in await self._read_artifacts(ids):
            run_id = artifact.flow_run_id
            if run_id is None:
                continue
            if artifact.type == FAILURE:
                failures[run_id].append(artifact.data)
            elif artifact.type == "progress" and run_id not in progress:
                data = artifact.data
                progress[run_id] = float(data) if isinstance(data, int | float) else 0.0
            elif artifact.type == "table" and artifact.key is None and run_id not in results:
                rows = (
                    json.loads(artifact.data) if isinstance(artifact.data, str) else artifact.data
                )
                if isinstance(rows, list) and rows and isinstance(rows[0], dict):
                    results[run_id] = rows[0]
        return progress, results, failures

    async def _read_artifacts(self, ids: list[UUID]) -> list[Artifact]:
        """The runs' progress and table artifacts (and failures, for an admin), newest first,
        all pages."""
        types = ["progress", "table", FAILURE] if self.admin else ["progress", "table"]
        found: list[Artifact] = []
        while True:
            page = await self.client.read_artifacts(
                artifact_filter=ArtifactFilter(
                    flow_run_id=ArtifactFilterFlowRunId(any_=ids),
                    type=ArtifactFilterType(any_=types),
                ),
                sort=ArtifactSort.UPDATED_DESC,
                limit=PAGE,
                offset=len(found),
            )
            found.extend(page)
            if len(page) < PAGE:
                return found

    async def _task_runs(self, ids: list[UUID]) -> dict[UUID, list[TaskRun]]:
        by_run: dict[UUID, list[TaskRun]] = defaultdict(list)
        offset = 0
        while True:
            page = await self.client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=ids)),
                sort=TaskRunSort.ID_DESC,
                limit=PAGE,
                offset=offset,
            )
            for task_run in page:
                if task_run.flow_run_id is not None:
                    by_run[task_run.flow_run_id].append(task_run)
            if len(page) < PAGE:
                return by_run
            offset += PAGE
