"""/api/jobs: job status, lists, statistics, retry, cancel, remove, clean, and an event stream."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import timedelta
from typing import Annotated
from uuid import UUID

from fastapi import APIRouter, Body, Query
from fastapi.responses import StreamingResponse

from api_shim.access import CallerScope
from api_shim.auth import AdminCaller
from api_shim.gateway import POOLS, Gateway, GatewayError, JobConflict, JobNotFound, Scope
from api_shim.gateway.admin import clean as clean_jobs
from api_shim.gateway.jobs import epoch_ms
from api_shim.metrics import JOB_OPERATIONS
from api_shim.routes import GatewayDep, errors
from api_shim.schemas import (
    MAX_BULK,
    BulkJobResult,
    BulkJobResults,
    BulkJobsRequest,
    Cancelled,
    CleanRequest,
    CleanResult,
    Envelope,
    Job,
    JobEvent,
    JobList,
    JobLogs,
    JobRef,
    LogEntry,
    QueueCounts,
)
from deployments.control.jobs import LOG_LEVELS, log_level
from deployments.control.states import JobState
from tasks.core.settings import get_settings

router = APIRouter(prefix="/api/jobs", tags=["jobs"])

#: The largest page of GET /api/jobs; a larger `limit` is capped to it, as the original does.
MAX_LIMIT = 200
#: The largest page of GET /api/jobs/:id/logs: the most Prefect answers at once.
MAX_LOG_LINES = 200
#: The states a job can be cancelled in, for a bulk cancel by filters alone.
UNENDED = tuple(state for state in JobState if not state.final)
#: Seconds between keep-alive comments on a quiet event stream, so proxies keep it open.
KEEPALIVE_SECONDS = 15.0
#: Seconds between reads of a job whose stream tells of no change: a safety net for an event
#: lost in a reconnect, rare enough that 100 open streams cost about one read a second.
SAFETY_READ_SECONDS = 100.0


class InvalidQuery(Exception):
    """A query parameter has a value outside the allowed ones (400)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


def _choice(field: str, value: str | None, allowed: list[str]) -> str | None:
    if value is None or value in allowed:
        return value
    raise InvalidQuery(field, f"unknown {field} {value!r}; use one of {', '.join(allowed)}")


@router.get("", response_model=Envelope[JobList], responses=errors(400, 401, 422, 503))
async def list_jobs(
    scope: CallerScope,
    gateway: GatewayDep,
    # Checked here, not by FastAPI, for the original's 400 naming the allowed values; listed
    # as the parameters' `enum` all the same.
    queue: Annotated[
        str | None,
        Query(description=f"One of {', '.join(POOLS)}.", json_schema_extra={"enum": [*POOLS]}),
    ] = None,
    state: Annotated[
        str | None,
        Query(
            description=f"One of {', '.join(s.value for s in JobState)}.",
            json_schema_extra={"enum": [s.value for s in JobState]},
        ),
    ] = None,
    server_id: Annotated[
        UUID | None, Query(alias="serverId", description="Only this server's jobs.")
    ] = None,
    limit: Annotated[
        int, Query(ge=1, description=f"Jobs per page; above {MAX_LIMIT}: {MAX_LIMIT}.")
    ] = 50,
    offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
) -> Envelope[JobList]:
    """The caller's jobs on the servers they own (an admin's: all), newest first; `total`
    counts all that match, `limit` is the one used (at most 200, as the original answers)."""
    queue = _choice("queue", queue, list(POOLS))
    wanted = _choice("state", state, [s.value for s in JobState])
    page = await gateway.jobs(
        scope,
        queue,
        JobState(wanted) if wanted else None,
        min(limit, MAX_LIMIT),
        offset,
        server_id=server_id,
    )
    return Envelope(message="Jobs retrieved successfully", data=page)


@router.get(
    "/stats/all", response_model=Envelope[dict[str, QueueCounts]], responses=errors(401, 503)
)
async def stats(scope: CallerScope, gateway: GatewayDep) -> Envelope[dict[str, QueueCounts]]:
    """Jobs per queue and state: the caller's (an admin's: everyone's)."""
    counts = await gateway.counts(scope)
    return Envelope(message="Job statistics retrieved successfully", data=counts)


@router.post(
    "/clean", response_model=Envelope[CleanResult], responses=errors(400, 401, 403, 422, 503)
)
async def clean(
    caller: AdminCaller,
    gateway: GatewayDep,
    body: Annotated[CleanRequest | None, Body()] = None,
) -> Envelope[CleanResult]:
    """Admin: delete finished jobs older than `older_than_seconds` and completed jobs beyond the
    newest `keep_completed` per queue (defaults: 7 days, 1000)."""
    body = body or CleanRequest()
    result = await clean_jobs(
        gateway, timedelta(seconds=body.older_than_seconds), body.keep_completed
    )
    JOB_OPERATIONS.labels("clean").inc()
    return Envelope(message=f"Removed {result.deleted} old jobs", data=result)


#: Operations of one bulk request at once: each is one or two Prefect calls.
BULK_CONCURRENCY = 8


async def _bulk(
    body: BulkJobsRequest,
    scope: Scope | None,
    gateway: Gateway,
    default_states: tuple[JobState, ...],
    act: Callable[[UUID], Awaitable[JobState]],
) -> BulkJobResults:
    """`act` on each job of `body` (ids, or the filters' first `MAX_BULK` jobs in the states
    asked for, else `default_states`), a few at once; one result per job, in order."""
    if body.ids is not None:
        ids = list(dict.fromkeys(body.ids))
        total = len(ids)
    else:
        ids, total = [], 0
        for state in (body.state,) if body.state else default_states:
            wanted = MAX_BULK - len(ids)
            page = await gateway.jobs(
                scope, body.queue, state, max(wanted, 1), 0, server_id=body.server_id
            )
            ids += [UUID(job.id) for job in page.jobs][:wanted]
            total += page.total
    limit = asyncio.Semaphore(BULK_CONCURRENCY)

    async def one(job_id: UUID) -> BulkJobResult:
        async with limit:
            try:
                state = await act(job_id)
            except (JobNotFound, JobConflict) as exc:
                return BulkJobResult(job_id=str(job_id), success=False, message=exc.message)
        return BulkJobResult(job_id=str(job_id), success=True, state=state, message="done")

    results = await asyncio.gather(*(one(i) for i in ids))
    succeeded = sum(r.success for r in results)
    return BulkJobResults(results=results, count=len(results), succeeded=succeeded, total=total)


@router.post(
    "/retry", response_model=Envelope[BulkJobResults], responses=errors(400, 401, 422, 503)
)
async def retry_jobs(
    body: BulkJobsRequest, scope: CallerScope, gateway: GatewayDep
) -> Envelope[BulkJobResults]:
    """Run failed jobs again, each under its id: by `ids`, or by filters (`queue`, `state`,
    `serverId`; `state` defaults to `failed`); at most 200 per request, one result per job."""

    async def retry(job_id: UUID) -> JobState:
        await gateway.retry(job_id, scope)
        JOB_OPERATIONS.labels("retry").inc()
        return JobState.WAITING

    data = await _bulk(body, scope, gateway, (JobState.FAILED,), retry)
    return Envelope(message=f"Retried {data.succeeded} of {data.count} jobs", data=data)


@router.post(
    "/cancel", response_model=Envelope[BulkJobResults], responses=errors(400, 401, 422, 503)
)
async def cancel_jobs(
    body: BulkJobsRequest, scope: CallerScope, gateway: GatewayDep
) -> Envelope[BulkJobResults]:
    """Cancel jobs that have not ended: by `ids`, or by filters (`state` defaults to every
    state before the end); at most 200 per request, one result per job."""

    async def cancel(job_id: UUID) -> JobState:
        state = await gateway.cancel(job_id, scope)
        JOB_OPERATIONS.labels("cancel").inc()
        return state

    data = await _bulk(body, scope, gateway, UNENDED, cancel)
    return Envelope(message=f"Cancelled {data.succeeded} of {data.count} jobs", data=data)


@router.get("/{job_id}", response_model=Envelope[Job], responses=errors(401, 404, 422, 503))
async def get_job(job_id: UUID, scope: CallerScope, gateway: GatewayDep) -> Envelope[Job]:
    job = await gateway.job(job_id, scope)
    return Envelope(message="Job status retrieved successfully", data=job)


@router.get(
    "/{job_id}/logs", response_model=Envelope[JobLogs], responses=errors(400, 401, 404, 422, 503)
)
async def job_logs(
    job_id: UUID,
    scope: CallerScope,
    gateway: GatewayDep,
    level: Annotated[
        str,
        Query(
            description=f"At least this level: {', '.join(LOG_LEVELS)} or a number.",
            json_schema_extra={"pattern": f"^({'|'.join(LOG_LEVELS)}|[0-9]+)$"},
        ),
    ] = "debug",
    limit: Annotated[
        int, Query(ge=1, description=f"Lines per page; above {MAX_LOG_LINES}: {MAX_LOG_LINES}.")
    ] = 200,
    offset: Annotated[int, Query(ge=0, le=10_000_000)] = 0,
) -> Envelope[JobLogs]:
    """The job's log (Prefect's flow-run logs), oldest first; the output of an operator's
    command (a hook, an update) is shown to admins only, a user's line says it is withheld."""
    try:
        wanted = log_level(level)
    except ValueError as exc:
        raise InvalidQuery("level", str(exc)) from None
    limit = min(limit, MAX_LOG_LINES)
    lines = await gateway.logs(job_id, scope, wanted, limit, offset)
    entries = [
        LogEntry(
            timestamp=epoch_ms(line.timestamp) or 0,
            level=line.level_name,
            message=line.message,
            task_run_id=str(line.task_run_id) if line.task_run_id else None,
        )
        for line in lines
    ]
    data = JobLogs(job_id=str(job_id), logs=entries, count=len(entries), limit=limit, offset=offset)
    return Envelope(message="Job logs retrieved successfully", data=data)


@router.delete(
    "/{job_id}", response_model=Envelope[None], responses=errors(401, 404, 409, 422, 503)
)
async def remove_job(job_id: UUID, scope: CallerScope, gateway: GatewayDep) -> Envelope[None]:
    """Remove a job that is not running (409 for an active one)."""
    await gateway.delete(job_id, scope)
    JOB_OPERATIONS.labels("delete").inc()
    return Envelope(message="Job removed successfully", data=None)


@router.post(
    "/{job_id}/retry", response_model=Envelope[JobRef], responses=errors(401, 404, 409, 422, 503)
)
async def retry_job(job_id: UUID, scope: CallerScope, gateway: GatewayDep) -> Envelope[JobRef]:
    """Run a failed job again under the same id (409 unless it failed)."""
    await gateway.retry(job_id, scope)
    JOB_OPERATIONS.labels("retry").inc()
    return Envelope(message="Job retry initiated successfully", data=JobRef(job_id=str(job_id)))


@router.post(
    "/{job_id}/cancel",
    response_model=Envelope[Cancelled],
    responses=errors(401, 404, 409, 422, 503),
)
async def cancel_job(job_id: UUID, scope: CallerScope, gateway: GatewayDep) -> Envelope[Cancelled]:
    """Cancel a job that has not ended: a running one is stopped by its worker (409 if ended)."""
    state = await gateway.cancel(job_id, scope)
    JOB_OPERATIONS.labels("cancel").inc()
    data = Cancelled(job_id=str(job_id), state=state)
    return Envelope(message="Job cancellation requested", data=data)


@router.get(
    "/{job_id}/events",
    response_class=StreamingResponse,
    responses={
        200: {"content": {"text/event-stream": {}}, "description": "`job` events until final"},
        **errors(401, 404, 422, 503),
    },
)
async def job_events(job_id: UUID, scope: CallerScope, gateway: GatewayDep) -> StreamingResponse:
    """Server-Sent Events: a `job` event whenever the state or progress changes, an `end`
    event once the job is final (or an `error` event if it can no longer be read)."""
    await gateway.job(job_id, scope)  # 404 before the stream starts
    stream = _events(gateway, job_id, scope, get_settings().api.events_poll)
    return StreamingResponse(
        stream,
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


async def _events(
    gateway: Gateway, job_id: UUID, scope: Scope | None, poll: float
) -> AsyncIterator[str]:
    """The job read again at each change Prefect's event stream tells of
    (api_shim/gateway/changes.py), every `poll` seconds while there is no stream, and every
    `SAFETY_READ_SECONDS` in any case."""
    last: tuple[JobState, float] | None = None
    keepalive = asyncio.get_running_loop().time() + KEEPALIVE_SECONDS
    with gateway.changes.listen(job_id) as changed:
        while True:
            changed.clear()
            try:
                job = await gateway.job(job_id, scope)
            except GatewayError as exc:
                yield _sse("error", json.dumps({"message": exc.message}))
                return
            if (job.state, job.progress) != last:
                last = (job.state, job.progress)
                event = JobEvent(
                    job_id=job.id,
                    state=job.state,
                    progress=job.progress,
                    message=job.failed_reason,
                    final=job.state.final,
                )
                yield _sse("job", event.model_dump_json(by_alias=True))
                if job.state.final:
                    yield _sse("end", event.model_dump_json(by_alias=True))
                    return
            # Until a change or the next read's time, with keep-alives for proxies meanwhile.
            loop = asyncio.get_running_loop()
            began = loop.time()
            while not changed.is_set():
                due = began + (SAFETY_READ_SECONDS if gateway.changes.live else poll)
                if loop.time() >= due:
                    break
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(changed.wait(), min(due, keepalive) - loop.time())
                if loop.time() >= keepalive:
                    keepalive = loop.time() + KEEPALIVE_SECONDS
                    yield ": keep-alive\n\n"


def _sse(event: str, data: str) -> str:
    return f"event: {event}\ndata: {data}\n\n"
