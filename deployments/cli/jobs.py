"""The CLI's side of Prefect: start jobs by deployment name and follow a job to its end.

Starting, pausing and reading a job are deployments/control/jobs.py's, the API shim's too, so
`medicine-man watch` and `GET /api/jobs/:id` tell the same state. This module brings the
client of the configured Prefect API, and Prefect's own errors stop here: they come out as
`CliError`s, whose messages are meant for the operator.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import httpx
from prefect.client.orchestration import PrefectClient, get_client
from prefect.client.schemas.filters import FlowRunFilter
from prefect.client.schemas.objects import FlowRun
from prefect.exceptions import ObjectNotFound
from prefect.settings import PREFECT_API_URL

from deployments.control import jobs
from deployments.control.catalogue import CATALOGUE, DEPLOYMENTS, MAINTENANCE, server_tag
from deployments.control.jobs import Enqueued, JobSnapshot
from deployments.control.queues import Priority
from deployments.control.selection import (
    WAITING_FOR_SERVER_READ,
    Slice,
    needs_waiting_for_server,
    page_of,
    read_slice,
    slices_for,
    waiting_for_server,
)
from deployments.control.states import JobState
from tasks.core.jobs import JobType

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
    job_type: JobType,
    parameters: dict[str, Any],
    priority: Priority | None = None,
    due: datetime | None = None,
) -> Enqueued:
    """Create a flow run of the job type's deployment in the work queue of `priority`, not
    before `due` if given."""
    async with prefect_client() as client:
        try:
            return await jobs.enqueue(client, job_type, parameters, priority=priority, due=due)
        except ObjectNotFound:
            raise _missing(CATALOGUE[job_type].deployment.full_name) from None


async def enqueue_maintenance(parameters: dict[str, Any]) -> Enqueued:
    """Create a run of the maintenance deployment in its work queue (`scan/low`)."""
    async with prefect_client() as client:
        try:
            return await jobs.enqueue_maintenance(client, parameters)
        except ObjectNotFound:
            raise _missing(MAINTENANCE.full_name) from None


def _missing(deployment: str) -> DeploymentMissing:
    return DeploymentMissing(
        f"deployment {deployment} is not registered; run the bootstrap (`make up`) first"
    )


async def set_paused(queue: str | None, paused: bool) -> list[str]:
    """Pause (or resume) the pool `queue`, or all of them; returns their names."""
    jobs.pools_of(queue)  # an unknown queue is refused before anything connects
    async with prefect_client() as client:
        return await jobs.set_paused(client, queue, paused)


async def job_result(job_id: UUID) -> dict[str, Any] | None:
    """The result a job published when it ended (tasks/outcome.py), or None."""
    async with prefect_client() as client:
        return (await snapshot(client, job_id)).result


async def snapshot(client: PrefectClient, job_id: UUID) -> JobSnapshot:
    """The job as the control layer reads it for the API too; failures in full, as an admin
    sees them in the API: the command that failed and its output."""
    try:
        return await jobs.read_job(client, job_id, full_reasons=True)
    except ObjectNotFound:
        raise JobNotFound(f"no job {job_id}") from None


async def watch(
    job_id: UUID,
    on_update: Callable[[JobSnapshot], None],
    *,
    poll_seconds: float = POLL_SECONDS,
) -> JobSnapshot:
    """Call `on_update` with each snapshot of the job until it is final; return the last one."""
    async with prefect_client() as client:
        while True:
            current = await snapshot(client, job_id)
            on_update(current)
            if current.final:
                return current
            await asyncio.sleep(poll_seconds)


#: How far back a follow reads again each time: lines reach Prefect in batches, a late one with
#: an earlier time than the newest seen is still shown (once: by id).
FOLLOW_OVERLAP = timedelta(seconds=10)
#: Lines per read of `follow_logs`: the most Prefect answers at once.
LOG_PAGE = 200


async def follow_logs(
    job_id: UUID,
    on_line: Callable[[jobs.LogLine], None],
    *,
    level: int = 0,
    follow: bool = False,
    poll_seconds: float = POLL_SECONDS,
) -> None:
    """Call `on_line` with each of the job's log lines, oldest first, in full (the operator's
    view); with `follow`, also with the lines that come until the job has ended and its last
    lines have arrived."""
    seen: set[UUID] = set()
    async with prefect_client() as client:
        await snapshot(client, job_id)  # an unknown job is JobNotFound, not an empty log
        after: datetime | None = None
        newest: datetime | None = None
        ended_at: float | None = None
        while True:
            offset = 0
            while True:  # the pages of one read share its `after`, or offsets would skip
                page = await jobs.read_logs(
                    client, job_id, level=level, after=after, limit=LOG_PAGE, offset=offset,
                    full=True,
                )  # fmt: skip
                for line in page:
                    if line.id not in seen:
                        seen.add(line.id)
                        on_line(line)
                    if newest is None or line.timestamp > newest:
                        newest = line.timestamp
                if len(page) < LOG_PAGE:
                    break
                offset += LOG_PAGE
            after = newest - FOLLOW_OVERLAP if newest is not None else None
            if not follow:
                return
            now = asyncio.get_running_loop().time()
            if ended_at is None and (await snapshot(client, job_id)).final:
                ended_at = now
            # A run's last lines reach Prefect after its end, in the next batch of its logs.
            if ended_at is not None and now - ended_at > 2 * poll_seconds + 1:
                return
            await asyncio.sleep(poll_seconds)


async def list_jobs(
    queue: str | None, state: JobState | None, server_id: UUID | None, limit: int
) -> tuple[list[JobSnapshot], int]:
    """The newest `limit` jobs of a queue (or all), in a state (or any), of a server (or any),
    chosen by the same slices as the API's list; and how many match in all."""
    pools = tuple(jobs.pools_of(queue))
    async with prefect_client() as client:
        holds = await jobs.read_holds(client)
        by_pool: dict[str, list[UUID]] = {pool: [] for pool in pools}
        for deployment in DEPLOYMENTS:
            if deployment.queue.name in by_pool:
                try:
                    found = await client.read_deployment_by_name(deployment.full_name)
                except ObjectNotFound:
                    raise _missing(deployment.full_name) from None
                by_pool[deployment.queue.name].append(found.id)

        def flow_runs(part: Slice) -> FlowRunFilter:
            ids = [i for pool in part.pools for i in by_pool[pool]]
            return part.flow_run_filter(None, deployments=ids)

        async def count(part: Slice) -> int:
            return await client.count_flow_runs(flow_run_filter=flow_runs(part))

        async def read(part: Slice, offset: int, n: int) -> list[FlowRun]:
            return await read_slice(client, flow_runs(part), offset, n)

        waiting = (
            await read(waiting_for_server(pools), 0, WAITING_FOR_SERVER_READ)
            if needs_waiting_for_server(state)
            else []
        )
        slices = slices_for(state, pools, holds, datetime.now(UTC), [r.id for r in waiting])
        if server_id is not None:
            slices = [replace(s, tags=(*s.tags, server_tag(server_id))) for s in slices]
        runs, total = await page_of(slices, count, read, 0, limit)
        return await jobs.JobReader(client, full_reasons=True).jobs(runs, holds), total
