"""The CLI's side of Prefect: start jobs by deployment name and follow a job to its end.

No flow function is imported here: a job is a flow run created from its deployment, found by
the `flow/deployment` name of the job catalogue. Prefect's own errors stop at this module and
come out as `CliError`s, whose messages are meant for the operator.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import httpx
from prefect.client.orchestration import PrefectClient, get_client
from prefect.client.schemas.objects import FlowRun, StateType
from prefect.exceptions import ObjectNotFound
from prefect.settings import PREFECT_API_URL

from deployments.control.catalogue import CATALOGUE, MAINTENANCE
from deployments.control.enqueue import create_job_run
from deployments.control.maintenance import create_maintenance_run
from deployments.control.queues import Priority
from deployments.control.states import JobState, job_state
from tasks.core.jobs import JobType
from tasks.outcome import full_reason, read_failures, read_result
from tasks.progress import read_progress

#: Seconds between two looks at a watched job.
POLL_SECONDS = 1.0


class CliError(Exception):
    """The command could not be carried out."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or type(self).__name__).strip())


class OrchestratorUnavailable(CliError):
    """The Prefect API cannot be reached; start the stack with `make up`."""


class DeploymentMissing(CliError):
    """The job's deployment is not registered; run the bootstrap (`make up`) first."""


class JobNotFound(CliError):
    """No job with that id."""


@dataclass(frozen=True)
class Enqueued:
    """A job that was just created."""

    job_id: UUID
    deployment: str
    #: `pool/work-queue` the job waits in.
    queue: str


@dataclass(frozen=True)
class Snapshot:
    """What a watched job looks like right now."""

    state: JobState
    #: Prefect's state name, e.g. `AwaitingRetry` or `TimedOut`.
    state_name: str
    #: Prefect's state message: the failure reason of a failed job.
    message: str | None
    percent: float
    #: The progress message of the last milestone.
    step: str | None
    final: bool


@asynccontextmanager
async def prefect_client() -> AsyncIterator[PrefectClient]:
    """A client of the configured Prefect API; never an ephemeral in-process server."""
    url = PREFECT_API_URL.value()
    if not url:
        raise OrchestratorUnavailable(
            "PREFECT_API_URL is not set; start the stack (`make up`) and point it at its API"
        )
    try:
        async with get_client() as client:
            yield client
    except httpx.HTTPStatusError as exc:
        if exc.response.status_code == 401:
            raise CliError(
                f"the Prefect API at {url} refused the credentials: set PREFECT_API_AUTH_STRING"
                " to its auth string (`make up` keeps it in var/prefect-auth and says so)"
            ) from None
        detail = exc.response.text.strip()[:300]
        raise CliError(
            f"the Prefect API at {url} answered {exc.response.status_code}: {detail}"
        ) from None
    except (httpx.TransportError, OSError) as exc:
        raise OrchestratorUnavailable(
            f"the Prefect API at {url} cannot be reached ({exc or type(exc).__name__}); "
            "is the stack up (`make up`)?"
        ) from None


async def enqueue(
    job_type: JobType, parameters: dict[str, Any], priority: Priority | None = None
) -> Enqueued:
    """Create a flow run of the job type's deployment in the work queue of `priority`."""
    job = CATALOGUE[job_type]
    name = job.deployment.full_name
    queue_name = (priority or job.default_priority).queue_name
    async with prefect_client() as client:
        try:
            run = await create_job_run(client, job_type, parameters, priority=priority)
        except ObjectNotFound:
            raise DeploymentMissing(
                f"deployment {name} is not registered; run the bootstrap (`make up`) first"
            ) from None
    return Enqueued(job_id=run.id, deployment=name, queue=f"{job.queue.name}/{queue_name}")


async def enqueue_maintenance(parameters: dict[str, Any]) -> Enqueued:
    """Create a run of the maintenance deployment in its work queue (`scan/low`)."""
    name = MAINTENANCE.full_name
    async with prefect_client() as client:
        try:
            run = await create_maintenance_run(client, parameters)
        except ObjectNotFound:
            raise DeploymentMissing(
                f"deployment {name} is not registered; run the bootstrap (`make up`) first"
            ) from None
    return Enqueued(
        job_id=run.id,
        deployment=name,
        queue=f"{MAINTENANCE.queue.name}/{MAINTENANCE.priority.queue_name}",
    )


async def job_result(job_id: UUID) -> dict[str, Any] | None:
    """The result a job published when it ended (`tasks.outcome`), or None."""
    async with prefect_client() as client:
        return await read_result(client, job_id)


async def snapshot(client: PrefectClient, job_id: UUID) -> Snapshot:
    """The job's state (mapped by `deployments.control.states`) and its progress."""
    try:
        run = await client.read_flow_run(job_id)
    except ObjectNotFound:
        raise JobNotFound(f"no job {job_id}") from None
    reading = await read_progress(client, job_id)
    state = run.state
    message = state.message if state is not None else None
    if message is not None and state is not None and state.is_failed():
        # The operator's view, as an admin's in the API: the command that failed and its output.
        message = full_reason(message, await read_failures(client, job_id))
    return Snapshot(
        state=await _job_state(client, run),
        state_name=(state.name if state is not None else None) or "Pending",
        message=message,
        percent=reading.percent if reading is not None else 0.0,
        step=reading.message if reading is not None else None,
        final=state is not None and state.is_final(),
    )


async def watch(
    job_id: UUID,
    on_update: Callable[[Snapshot], None],
    *,
    poll_seconds: float = POLL_SECONDS,
) -> Snapshot:
    """Call `on_update` with each snapshot of the job until it is final; return the last one."""
    async with prefect_client() as client:
        while True:
            current = await snapshot(client, job_id)
            on_update(current)
            if current.final:
                return current
            await asyncio.sleep(poll_seconds)


async def _job_state(client: PrefectClient, run: FlowRun) -> JobState:
    if run.state is None:
        return job_state(StateType.PENDING)
    state_type = run.state.type
    paused = False
    if state_type is StateType.SCHEDULED:
        paused = await _held(client, run)
    return job_state(
        state_type,
        scheduled_time=run.state.state_details.scheduled_time or run.next_scheduled_start_time,
        now=datetime.now(UTC),
        pool_paused=paused,
    )


async def _held(client: PrefectClient, run: FlowRun) -> bool:
    """Whether the run's work pool or work queue is paused, so it cannot start."""
    try:
        if run.work_pool_name and (await client.read_work_pool(run.work_pool_name)).is_paused:
            return True
        if run.work_queue_id is not None:
            return bool((await client.read_work_queue(run.work_queue_id)).is_paused)
    except ObjectNotFound:
        return False
    return False
