"""GET /api/servers: the caller's servers; POST /api/servers/:id/backup|scan|update: enqueue a
job on one of them and answer at once with its ids."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, TypeVar
from uuid import UUID, uuid4

from fastapi import APIRouter, Body, HTTPException, Request, status

from api_shim.access import inventory_for, usable_server, usable_servers
from api_shim.auth import CurrentCaller
from api_shim.metrics import JOBS_ENQUEUED
from api_shim.routes import GatewayDep, IdempotencyKey, errors, scoped_key
from api_shim.schemas import (
    BackupEnqueued,
    BackupRequest,
    BulkBackupRequest,
    BulkEnqueued,
    BulkEnqueueResult,
    BulkScanRequest,
    Envelope,
    PriorityValue,
    ScanEnqueued,
    ScanRequest,
    ServerAccess,
    ServerAction,
    ServerChoice,
    ServerInfo,
    UpdateEnqueued,
    UpdateRequest,
)
from deployments.control.queues import Priority
from tasks.core.callers import Caller
from tasks.core.errors import InvalidOptions, ServerNotFound
from tasks.core.inventory import Server
from tasks.core.jobs import JobType, backup_recipients, backup_spec
from tasks.core.settings import get_settings

router = APIRouter(prefix="/api/servers", tags=["servers"])

E = TypeVar("E", BackupEnqueued, ScanEnqueued, UpdateEnqueued)

RESPONSES = errors(400, 401, 404, 422, 503)


@router.get("", response_model=Envelope[list[ServerInfo]], responses=errors(401, 503))
async def list_servers(caller: CurrentCaller) -> Envelope[list[ServerInfo]]:
    """The servers the caller may run jobs on (an admin: all, with how they are reached)."""
    servers = [_info(s, caller.is_admin) for s in usable_servers(caller, inventory_for(caller))]
    return Envelope(message="Servers retrieved successfully", data=servers)


def _info(server: Server, admin: bool) -> ServerInfo:
    actions: list[ServerAction] = ["backup"] if server.backup is not None else []
    actions.append("scan")
    if server.update is not None and server.update.command:
        actions.append("update")
    access = (
        ServerAccess(
            host=server.host,
            port=server.port,
            username=server.username,
            owners=list(server.owners),
        )
        if admin
        else None
    )
    return ServerInfo(id=str(server.id), name=server.name, actions=actions, access=access)


def _any(server: Server) -> bool:
    return True


def _backed_up(server: Server) -> bool:
    return server.backup is not None


#: Creates of one bulk enqueue at once: Prefect's server takes them one after another anyway.
BULK_CONCURRENCY = 16


async def _many(
    request: Request,
    gateway: GatewayDep,
    caller: Caller,
    choice: ServerChoice,
    wanted: Callable[[Server], bool],
    start: Callable[[Server, str | None], Awaitable[BackupEnqueued | ScanEnqueued]],
    idempotency_key: str | None,
) -> Envelope[BulkEnqueued]:
    """One job per server of `choice` (with `all`: those `wanted`), a few created at once; a
    server the caller may not use, or that refuses the options, gets its reason instead."""
    inventory = inventory_for(caller)
    if choice.server_ids is not None:
        ids = list(dict.fromkeys(choice.server_ids))
    else:
        ids = [s.id for s in usable_servers(caller, inventory) if wanted(s)]
    limit = asyncio.Semaphore(BULK_CONCURRENCY)
    key = scoped_key(request, caller.user_id, idempotency_key)

    async def one(server_id: UUID) -> BulkEnqueueResult:
        async with limit:
            try:
                server = usable_server(caller, inventory, server_id)
                job = await start(server, f"{key}:{server_id}" if key else None)
            except (ServerNotFound, InvalidOptions) as exc:
                return BulkEnqueueResult(server_id=str(server_id), success=False, message=str(exc))
        return BulkEnqueueResult(
            server_id=str(server_id), success=True, message=job.message, job=job
        )

    results = await asyncio.gather(*(one(i) for i in ids))
    enqueued = sum(r.success for r in results)
    data = BulkEnqueued(results=results, count=len(results), enqueued=enqueued)
    return Envelope(message=f"Enqueued {enqueued} of {len(results)} jobs", data=data)


@router.post(
    "/scan",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=Envelope[BulkEnqueued],
    responses=errors(400, 401, 422, 503),
)
async def scan_many(
    request: Request,
    caller: CurrentCaller,
    gateway: GatewayDep,
    body: BulkScanRequest,
    idempotency_key: IdempotencyKey = None,
) -> Envelope[BulkEnqueued]:
    """Enqueue a scan of each server in `serverIds`, or of `all` the caller may use; one
    result per server, in order (a server the caller may not use: its reason, no job)."""
    job_type = JobType.SCAN_QUICK if body.scan_type == "quick" else JobType.SCAN_FULL

    async def start(server: Server, key: str | None) -> ScanEnqueued:
        return await _job(
            gateway, caller, job_type, server.id, "scan_id", {}, body, key, ScanEnqueued
        )

    return await _many(request, gateway, caller, body, _any, start, idempotency_key)


@router.post(
    "/backup",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=Envelope[BulkEnqueued],
    responses=errors(400, 401, 422, 503),
)
async def backup_many(
    request: Request,
    caller: CurrentCaller,
    gateway: GatewayDep,
    body: BulkBackupRequest,
    idempotency_key: IdempotencyKey = None,
) -> Envelope[BulkEnqueued]:
    """Enqueue a backup of each server in `serverIds`, or of `all` the caller may use that
    have a `backup:` in the inventory, same options for all; one result per server."""
    options = body.options()
    encryption = get_settings().encryption

    async def start(server: Server, key: str | None) -> BackupEnqueued:
        # A server without a backup, or encryption without a recipient: InvalidOptions.
        backup_recipients(options, backup_spec(server), encryption)
        extra = {"options": options.model_dump(mode="json")}
        return await _job(
            gateway, caller, JobType.BACKUP_MANUAL, server.id, "backup_id", extra, body, key,
            BackupEnqueued,
        )  # fmt: skip

    return await _many(request, gateway, caller, body, _backed_up, start, idempotency_key)


@router.post(
    "/{server_id}/backup",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=Envelope[BackupEnqueued],
    responses=RESPONSES,
)
async def backup(
    server_id: UUID,
    request: Request,
    caller: CurrentCaller,
    gateway: GatewayDep,
    idempotency_key: IdempotencyKey = None,
    body: Annotated[BackupRequest | None, Body()] = None,
) -> Envelope[BackupEnqueued]:
    """Enqueue a `backup:manual` job (HIGH priority unless asked otherwise)."""
    body = body or BackupRequest()
    options = body.options()
    server = usable_server(caller, inventory_for(caller), server_id)
    try:
        # Encryption without a recipient is refused here, not by a job that fails later.
        backup_recipients(options, server.backup, get_settings().encryption)
    except InvalidOptions as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc)) from None
    extra = {"options": options.model_dump(mode="json")}
    return await _enqueue(
        request, gateway, caller, JobType.BACKUP_MANUAL, server_id, "backup_id", extra,
        body, idempotency_key, BackupEnqueued, "Backup enqueued successfully",
    )  # fmt: skip


@router.post(
    "/{server_id}/scan",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=Envelope[ScanEnqueued],
    responses=RESPONSES,
)
async def scan(
    server_id: UUID,
    request: Request,
    caller: CurrentCaller,
    gateway: GatewayDep,
    idempotency_key: IdempotencyKey = None,
    body: Annotated[ScanRequest | None, Body()] = None,
) -> Envelope[ScanEnqueued]:
    """Enqueue a `scan:full` or `scan:quick` job (NORMAL priority unless asked otherwise)."""
    body = body or ScanRequest()
    job_type = JobType.SCAN_QUICK if body.scan_type == "quick" else JobType.SCAN_FULL
    return await _enqueue(
        request, gateway, caller, job_type, server_id, "scan_id", {},
        body, idempotency_key, ScanEnqueued, "Scan enqueued successfully",
    )  # fmt: skip


@router.post(
    "/{server_id}/update",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=Envelope[UpdateEnqueued],
    responses=RESPONSES,
)
async def update(
    server_id: UUID,
    request: Request,
    caller: CurrentCaller,
    gateway: GatewayDep,
    idempotency_key: IdempotencyKey = None,
    body: Annotated[UpdateRequest | None, Body()] = None,
) -> Envelope[UpdateEnqueued]:
    """Enqueue an `update:server` job (CRITICAL priority unless asked otherwise)."""
    body = body or UpdateRequest()
    return await _enqueue(
        request, gateway, caller, JobType.UPDATE_SERVER, server_id, "update_id", {},
        body, idempotency_key, UpdateEnqueued, "Update enqueued successfully",
    )  # fmt: skip


async def _enqueue(
    request: Request,
    gateway: GatewayDep,
    caller: Caller,
    job_type: JobType,
    server_id: UUID,
    id_name: str,
    extra: dict[str, Any],
    body: BackupRequest | ScanRequest | UpdateRequest,
    idempotency_key: str | None,
    answer: type[E],
    message: str,
) -> Envelope[E]:
    data = await _job(
        gateway, caller, job_type, server_id, id_name, extra, body,
        scoped_key(request, caller.user_id, idempotency_key), answer,
    )  # fmt: skip
    return Envelope(message=message, data=data)


async def _job(
    gateway: GatewayDep,
    caller: Caller,
    job_type: JobType,
    server_id: UUID,
    id_name: str,
    extra: dict[str, Any],
    body: BackupRequest | ScanRequest | UpdateRequest,
    key: str | None,
    answer: type[E],
) -> E:
    """One job on one server, as the caller asked; `key`: the scoped Idempotency-Key."""
    # An unknown server (or another's) is refused here, not by a job that fails later.
    usable_server(caller, inventory_for(caller), server_id)
    parameters: dict[str, Any] = {
        "server_id": str(server_id),
        id_name: str(uuid4()),
        "user_id": caller.user_id,
        "job_type": job_type.value,
        **extra,
    }
    due = body.due()
    job = await gateway.enqueue(
        job_type, parameters, user_id=caller.user_id, priority=_priority(body.priority),
        idempotency_key=key, due=due,
    )  # fmt: skip
    JOBS_ENQUEUED.labels(job_type.value).inc()
    # A repeat (same Idempotency-Key) answers with the first request's job and due time.
    due = job.due
    return answer.model_validate(
        {
            "job_id": str(job.job_id),
            "server_id": str(job.parameters.get("server_id", server_id)),
            id_name: str(job.parameters.get(id_name)),
            "status": "delayed" if due else "pending",
            "message": (
                f"{job_type.value} is delayed until {due.isoformat()}"
                if due
                else f"{job_type.value} is queued and will run shortly"
            ),
        }
    )


def _priority(value: PriorityValue | None) -> Priority | None:
    if value is None:
        return None
    if isinstance(value, int):
        return Priority(value)
    return Priority.from_name(value)
