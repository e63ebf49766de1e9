"""A job as Prefect sees it: starting one, holding jobs by pausing their pools, and reading a job
back (state, progress, result, attempts).

The one implementation for the CLI (deployments/cli/jobs.py) and the API shim's gateway
(api_shim/gateway/), so the two cannot disagree about a job: each only translates Prefect's
errors (`ObjectNotFound`, httpx's), which are left to it, and maps `JobSnapshot`s to its output.

A page of jobs costs a fixed number of queries whatever its size: one per 200 artifacts
(progress, results and failures together), one per 200 task runs, and two for the holds.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from prefect.client.orchestration import PrefectClient
from prefect.client.schemas.actions import WorkPoolUpdate
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    ArtifactFilterType,
    FlowRunFilter,
    FlowRunFilterId,
    LogFilter,
    LogFilterFlowRunId,
    LogFilterLevel,
    LogFilterTimestamp,
)
from prefect.client.schemas.objects import Artifact, FlowRun, StateType, TaskRun
from prefect.client.schemas.sorting import ArtifactSort, LogSort, TaskRunSort
from prefect.states import Scheduled

from deployments.control.catalogue import (
    CATALOGUE,
    JOB_TYPE_TAG_PREFIX,
    MAINTENANCE,
    Deployment,
    job_type_tag,
    server_tag,
)
from deployments.control.maintenance import MAINTENANCE_TAG
from deployments.control.queues import QUEUES, Priority, get_queue
from deployments.control.states import JobState, job_state
from tasks.core.jobs import JobType
from tasks.outcome import COMMAND_OUTPUT_LOGGER, FAILURE, full_reason
from tasks.retry import MAX_ATTEMPTS

#: The most rows Prefect returns for one read (PREFECT_API_DEFAULT_LIMIT).
PAGE = 200

#: The pools of the queue table, in its order.
POOLS: tuple[str, ...] = tuple(queue.name for queue in QUEUES)


# -- starting a job --------------------------------------------------------------------------


@dataclass(frozen=True)
class Enqueued:
    """A job that was just created (or, for an idempotency key seen before, the one it made)."""

    job_id: UUID
    #: `flow/deployment` name.
    deployment: str
    #: `pool/work-queue` the job waits in.
    queue: str
    #: The run's parameters as Prefect keeps them: the first request's, for a repeated key.
    parameters: dict[str, Any]
    #: When a delayed job may start; None when it may start now (or has started).
    due: datetime | None = None


def enqueued(run: FlowRun, deployment: Deployment, priority: Priority) -> Enqueued:
    """What the caller is told about the run it created in `priority`'s work queue."""
    state = run.state
    due = state.state_details.scheduled_time if state is not None and state.is_scheduled() else None
    return Enqueued(
        job_id=run.id,
        deployment=deployment.full_name,
        queue=f"{deployment.queue.name}/{priority.queue_name}",
        parameters=dict(run.parameters),
        due=due if due is not None and due > datetime.now(UTC) else None,
    )


async def enqueue(
    client: PrefectClient,
    job_type: JobType,
    parameters: dict[str, Any],
    *,
    priority: Priority | None = None,
    tags: Iterable[str] = (),
    idempotency_key: str | None = None,
    deployment_id: UUID | None = None,
    due: datetime | None = None,
) -> Enqueued:
    """Create the flow run of a job in the work queue of `priority` (default: the job type's);
    with an `idempotency_key` seen before, Prefect returns that run. `due`: not before then
    (Scheduled until that time, so `delayed`); None: now.

    `deployment_id`: the job's deployment, if the caller knows it (saves a read).
    The run is tagged with its job type and its server (`parameters["server_id"]`), if it has
    one: a check of every server's archives has none, and so no user's scope shows it.
    """
    job = CATALOGUE[job_type]
    priority = priority or job.default_priority
    if deployment_id is None:
        deployment_id = (await client.read_deployment_by_name(job.deployment.full_name)).id
    run = await client.create_flow_run_from_deployment(
        deployment_id,
        parameters=parameters,
        work_queue_name=priority.queue_name,
        tags=[
            job_type_tag(job_type),
            *([server_tag(parameters["server_id"])] if parameters.get("server_id") else []),
            *tags,
        ],
        idempotency_key=idempotency_key,
        state=Scheduled(scheduled_time=due) if due is not None else None,
    )
    return enqueued(run, job.deployment, priority)


async def enqueue_maintenance(client: PrefectClient, parameters: dict[str, Any]) -> Enqueued:
    """A maintenance flow run now, in the deployment's own work queue (`scan/low`)."""
    deployment = await client.read_deployment_by_name(MAINTENANCE.full_name)
    run = await client.create_flow_run_from_deployment(
        deployment.id,
        parameters=parameters,
        work_queue_name=MAINTENANCE.priority.queue_name,
        tags=[MAINTENANCE_TAG],
    )
    return enqueued(run, MAINTENANCE, MAINTENANCE.priority)


# -- holding jobs ----------------------------------------------------------------------------


def pools_of(queue: str | None) -> list[str]:
    """The pool `queue`, or all pools when it is None; `ValueError` naming the allowed ones."""
    return [get_queue(queue).name] if queue is not None else list(POOLS)


async def set_paused(client: PrefectClient, queue: str | None, paused: bool) -> list[str]:
    """Pause (or resume) the pool `queue`, or all pools when it is None; returns their names.

    Held runs stay Scheduled, running ones go on. A paused pool hands no runs to its workers;
    on resume they take the backlog in work-queue priority order (critical first) within the
    pool's limit.

    Raises:
        ValueError: `queue` is not one of the pools; the message names the allowed ones.
    """
    pools = pools_of(queue)
    await asyncio.gather(
        *(client.update_work_pool(pool, WorkPoolUpdate(is_paused=paused)) for pool in pools)
    )
    return pools


@dataclass(frozen=True)
class Holds:
    """What is paused: a Scheduled run in a paused pool or a paused work queue cannot start,
    so it shows as `paused` whenever it is due (`deployments.control.states.job_state`).

    Pools are paused by `set_paused`; one work queue by Prefect's own API or UI.
    """

    #: Paused pools.
    pools: frozenset[str] = frozenset()
    #: Paused work queues, as (pool, work queue name).
    work_queues: frozenset[tuple[str, str]] = frozenset()
    #: The names of each pool's work queues, paused or not.
    queue_names: Mapping[str, frozenset[str]] = field(default_factory=dict)

    def hold(self, run: FlowRun) -> bool:
        """Whether `run`'s pool or work queue is paused."""
        pool = run.work_pool_name
        return pool in self.pools or (pool, run.work_queue_name) in self.work_queues

    def paused_queues(self, pool: str) -> frozenset[str]:
        """The names of the pool's paused work queues (none listed for a paused pool)."""
        return frozenset(name for p, name in self.work_queues if p == pool)


async def read_holds(client: PrefectClient) -> Holds:
    """The paused pools of the queue table and the paused work queues in them: two reads."""
    pools, queues = await asyncio.gather(client.read_work_pools(), client.read_work_queues())
    names = {pool.id: pool.name for pool in pools if pool.name in POOLS}
    by_pool: dict[str, set[str]] = defaultdict(set)
    paused_queues: set[tuple[str, str]] = set()
    for queue in queues:
        pool_name = names.get(queue.work_pool_id) if queue.work_pool_id is not None else None
        if pool_name is None:
            continue
        by_pool[pool_name].add(queue.name)
        if queue.is_paused:
            paused_queues.add((pool_name, queue.name))
    return Holds(
        pools=frozenset(pool.name for pool in pools if pool.name in POOLS and pool.is_paused),
        work_queues=frozenset(paused_queues),
        queue_names={pool: frozenset(found) for pool, found in by_pool.items()},
    )


# -- reading a job ---------------------------------------------------------------------------


@dataclass(frozen=True)
class JobSnapshot:
    """What a job looks like right now: the facts both the CLI and the API show."""

    id: UUID
    #: The job type, e.g. `backup:manual` (the maintenance flow's name for its runs).
    name: str
    #: The flow run's parameters: what the job was asked to do.
    parameters: dict[str, Any]
    state: JobState
    #: Prefect's state name, e.g. `AwaitingRetry` or `TimedOut`.
    state_name: str
    #: Prefect's state message: the failure reason of a failed job (in full for an admin).
    message: str | None
    percent: float
    #: The progress message of the last milestone.
    step: str | None
    #: Tries so far (`attempts_of`), of at most `MAX_ATTEMPTS` per run of the flow.
    attempts: int
    #: What the job published when it ended (tasks/outcome.py), or None.
    result: dict[str, Any] | None
    #: The work pool: backup, scan or update.
    pool: str | None
    created: datetime | None
    started: datetime | None
    ended: datetime | None
    max_attempts: int = MAX_ATTEMPTS

    @property
    def final(self) -> bool:
        return self.state.final


def state_of(run: FlowRun, holds: Holds, now: datetime) -> JobState:
    """The job state of a run, through the one state table."""
    if run.state is None:
        return job_state(StateType.PENDING)
    return job_state(
        run.state.type,
        scheduled_time=run.state.state_details.scheduled_time or run.next_scheduled_start_time,
        now=now,
        held=holds.hold(run),
        tags=run.tags,
    )


def job_name(run: FlowRun) -> str:
    """The job type, from the run's tag (or its `job_type` parameter)."""
    for tag in run.tags:
        if tag.startswith(JOB_TYPE_TAG_PREFIX):
            return tag.removeprefix(JOB_TYPE_TAG_PREFIX)
    return str(run.parameters.get("job_type") or run.flow_id)


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


@dataclass
class _Artifacts:
    """Per run: the newest progress (percent, message), result, and failures newest first."""

    progress: dict[UUID, tuple[float, str | None]] = field(default_factory=dict)
    results: dict[UUID, dict[str, Any]] = field(default_factory=dict)
    failures: dict[UUID, list[Any]] = field(default_factory=lambda: defaultdict(list))


class JobReader:
    """Reads `JobSnapshot`s for a batch of flow runs with a bounded number of queries.

    `full_reasons`: failure reasons in full, with the command text and output that the runs'
    state messages leave out (`tasks.outcome.full_reason`): for admins and the operator's CLI;
    users get the state message alone.
    """

    def __init__(self, client: PrefectClient, *, full_reasons: bool) -> None:
        self.client = client
        self.full_reasons = full_reasons
        #: The runs read so far whose job is `settled`.
        self.settled: set[UUID] = set()

    async def jobs(self, runs: Sequence[FlowRun], holds: Holds) -> list[JobSnapshot]:
        """The jobs of `runs`, given what is paused (only a Scheduled run's state needs it)."""
        if not runs:
            return []
        ids = [run.id for run in runs]
        artifacts, task_runs = await asyncio.gather(self._artifacts(ids), self._task_runs(ids))
        now = datetime.now(UTC)
        self.settled.update(run.id for run in runs if settled(run, task_runs.get(run.id, [])))
        return [self._job(run, holds, now, artifacts, task_runs.get(run.id, [])) for run in runs]

    async def job(self, run: FlowRun) -> JobSnapshot:
        """One job; the holds are read only for a Scheduled run, the one state they change."""
        scheduled = run.state is not None and run.state.type is StateType.SCHEDULED
        holds = await read_holds(self.client) if scheduled else Holds()
        (job,) = await self.jobs([run], holds)
        return job

    def _job(
        self,
        run: FlowRun,
        holds: Holds,
        now: datetime,
        artifacts: _Artifacts,
        task_runs: list[TaskRun],
    ) -> JobSnapshot:
        state = run.state
        message = state.message if state is not None else None
        if message is not None and self.full_reasons:
            message = full_reason(message, artifacts.failures.get(run.id, []))
        percent, step = artifacts.progress.get(run.id, (0.0, None))
        return JobSnapshot(
            id=run.id,
            name=job_name(run),
            parameters=dict(run.parameters),
            state=state_of(run, holds, now),
            state_name=(state.name if state is not None else None) or "Pending",
            message=message,
            percent=percent,
            step=step,
            attempts=attempts_of(run, task_runs),
            result=artifacts.results.get(run.id),
            pool=run.work_pool_name,
            created=run.created,
            started=run.start_time,
            ended=run.end_time,
        )

    async def _artifacts(self, ids: list[UUID]) -> _Artifacts:
        """Each run's progress (its newest progress artifact: a re-run starts a new one),
        result (its newest keyless table artifact, tasks/outcome.py) and, with full reasons,
        the data of its failure artifacts, newest first; in one query."""
        found = _Artifacts()
        for artifact in await self._read_artifacts(ids):
            run_id = artifact.flow_run_id
            if run_id is None:
                continue
            if artifact.type == FAILURE:
                found.failures[run_id].append(artifact.data)
            elif artifact.type == "progress" and run_id not in found.progress:
                data = artifact.data
                percent = float(data) if isinstance(data, int | float) else 0.0
                found.progress[run_id] = (percent, artifact.description)
            elif artifact.type == "table" and artifact.key is None and run_id not in found.results:
                rows = (
                    json.loads(artifact.data) if isinstance(artifact.data, str) else artifact.data
                )
                if isinstance(rows, list) and rows and isinstance(rows[0], dict):
                    found.results[run_id] = rows[0]
        return found

    async def _read_artifacts(self, ids: list[UUID]) -> list[Artifact]:
        """The runs' progress and table artifacts (and failures, with full reasons), newest
        first, all pages."""
        types = ["progress", "table", FAILURE] if self.full_reasons else ["progress", "table"]
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


async def read_job(client: PrefectClient, job_id: UUID, *, full_reasons: bool) -> JobSnapshot:
    """The job `job_id`; Prefect's `ObjectNotFound` when there is none."""
    run = await client.read_flow_run(job_id)
    return await JobReader(client, full_reasons=full_reasons).job(run)


# -- a job's logs ------------------------------------------------------------------------------

#: Python's level names, which Prefect keeps as numbers, for the API and the CLI.
LOG_LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40, "critical": 50}
#: What a user reads in place of a line of an operator's command's output (tasks/outcome.py).
WITHHELD = "(output of an operator's command: shown to admins)"


@dataclass(frozen=True)
class LogLine:
    """One line of a job's log, as Prefect keeps it."""

    id: UUID
    timestamp: datetime
    level: int
    #: The logger: `prefect.flow_runs`, `prefect.task_runs`, ...
    name: str
    message: str
    #: The task run that logged it; None for the flow run's own lines.
    task_run_id: UUID | None

    @property
    def level_name(self) -> str:
        return logging.getLevelName(self.level).lower()


def log_level(value: str) -> int:
    """A level by name (`info`) or number (20); ValueError names the names."""
    if value.isascii() and value.isdigit():
        return int(value)
    try:
        return LOG_LEVELS[value.lower()]
    except KeyError:
        raise ValueError(
            f"unknown log level {value!r}; use one of {', '.join(LOG_LEVELS)} or a number"
        ) from None


async def read_logs(
    client: PrefectClient,
    job_id: UUID,
    *,
    level: int = 0,
    after: datetime | None = None,
    limit: int = 200,
    offset: int = 0,
    full: bool,
) -> list[LogLine]:
    """A page of the job's log lines at `level` or above (after `after`, if given), oldest
    first. `full`: an operator's command's output as it is (admins, the operator's CLI); else
    each such line says only that it is withheld, so pages stay the same for everyone."""
    logs = await client.read_logs(
        log_filter=LogFilter(
            flow_run_id=LogFilterFlowRunId(any_=[job_id]),
            level=LogFilterLevel(ge_=level),
            timestamp=LogFilterTimestamp(after_=after) if after is not None else None,
        ),
        limit=limit,
        offset=offset,
        sort=LogSort.TIMESTAMP_ASC,
    )
    return [
        LogLine(
            id=log.id,
            timestamp=log.timestamp,
            level=log.level,
            name=log.name,
            message=log.message if full or log.name != COMMAND_OUTPUT_LOGGER else WITHHELD,
            task_run_id=log.task_run_id,
        )
        for log in logs
    ]
