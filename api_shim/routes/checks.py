"""Admin: POST /api/backups/check, a check of the stored archives now (a `check:archives` job)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Request, status

from api_shim.auth import AdminCaller
from api_shim.metrics import JOBS_ENQUEUED
from api_shim.routes import GatewayDep, IdempotencyKey, errors, scoped_key
from api_shim.schemas import CheckEnqueued, CheckRequest, Envelope
from tasks.core.jobs import JobType

router = APIRouter(tags=["backups"])


@router.post(
    "/api/backups/check",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=Envelope[CheckEnqueued],
    responses=errors(400, 401, 403, 422, 503),
)
async def check(
    request: Request,
    caller: AdminCaller,
    gateway: GatewayDep,
    idempotency_key: IdempotencyKey = None,
    body: Annotated[CheckRequest | None, Body()] = None,
) -> Envelope[CheckEnqueued]:
    """Enqueue a `check:archives` job (LOW priority): it re-reads the scheduled run's share of
    the archives (`{"all": true}`: all of them; `server_id`: one server's), marks each that no
    longer matches its manifest `corrupt`, and fails naming them (`GET /api/jobs/:id`)."""
    body = body or CheckRequest()
    job_type = JobType.CHECK_ARCHIVES
    parameters: dict[str, Any] = {
        "all_archives": body.all,
        "user_id": caller.user_id,
        "job_type": job_type.value,
    }
    if body.server_id is not None:
        parameters["server_id"] = str(body.server_id)
    job = await gateway.enqueue(
        job_type,
        parameters,
        user_id=caller.user_id,
        priority=None,
        idempotency_key=scoped_key(request, caller.user_id, idempotency_key),
    )
    JOBS_ENQUEUED.labels(job_type.value).inc()
    data = CheckEnqueued(
        job_id=str(job.job_id), message=f"{job_type.value} is queued and will run shortly"
    )
    return Envelope(message="Archive check enqueued successfully", data=data)
