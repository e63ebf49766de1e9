"""GET /api/metrics/queues and /api/metrics/system (any caller), GET /metrics (Prometheus)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from api_shim.access import CallerScope
from api_shim.gateway import Gateway, GatewayError, OrchestratorUnavailable, Scope
from api_shim.metrics import record_corrupt_backups, record_queues, verdict
from api_shim.routes import GatewayDep, errors
from api_shim.schemas import (
    Envelope,
    ErrorEnvelope,
    Health,
    HealthStatus,
    QueueCounts,
    QueueMetrics,
    SystemMetrics,
    WorkerCount,
)
from tasks.core.settings import get_settings

router = APIRouter(tags=["metrics"])

#: When this process started, for the uptime in /api/metrics/system.
STARTED = time.monotonic()


async def _queues(
    gateway: Gateway, scope: Scope | None
) -> tuple[dict[str, QueueCounts], dict[str, int], set[str]]:
    """The counts of the jobs `scope` sees, live workers and paused pools.

    Only everyone's counts go to the Prometheus gauges, which stand for the whole system.
    """
    counts, workers, paused = await asyncio.gather(
        gateway.counts(scope), gateway.workers_online(), gateway.paused_pools()
    )
    record_queues(counts if scope is None else {}, workers)
    return counts, workers, paused


def _unhealthy(exc: GatewayError) -> JSONResponse:
    body = ErrorEnvelope(message=f"Queues unhealthy: {exc.message}")
    return JSONResponse(body.model_dump(mode="json"), status_code=503)


@router.get(
    "/api/metrics/queues", response_model=Envelope[QueueMetrics], responses=errors(401, 503)
)
async def queue_metrics(scope: CallerScope, gateway: GatewayDep) -> Any:
    """Jobs per queue and state (a user's on their servers; an admin's: all), with a health
    verdict over those; 503 if Prefect is down."""
    try:
        counts, workers, _ = await _queues(gateway, scope)
    except OrchestratorUnavailable as exc:
        return _unhealthy(exc)
    data = QueueMetrics.model_validate({**counts, "health": verdict(counts, workers)})
    return Envelope[QueueMetrics](message="Queue metrics retrieved", data=data)


@router.get(
    "/api/metrics/system", response_model=Envelope[SystemMetrics], responses=errors(401, 503)
)
async def system_metrics(scope: CallerScope, gateway: GatewayDep) -> Any:
    """The shim, Prefect, the workers and the queues (the jobs the caller sees) in one report."""
    prefect = await gateway.status()
    uptime = round(time.monotonic() - STARTED, 3)
    if not prefect.reachable:
        return _unhealthy(OrchestratorUnavailable(prefect.message))
    try:
        counts, workers, paused = await _queues(gateway, scope)
    except OrchestratorUnavailable as exc:
        return _unhealthy(exc)
    health: Health = verdict(counts, workers)
    data = SystemMetrics(
        status=health.status,
        uptime_seconds=uptime,
        prefect=prefect,
        workers=[
            WorkerCount(queue=pool, online=online, paused=pool in paused)
            for pool, online in workers.items()
        ],
        queues=counts,
        health=health,
    )
    message = "System healthy" if health.status is HealthStatus.HEALTHY else "System degraded"
    return Envelope[SystemMetrics](message=message, data=data)


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST: {}}, "description": "Prometheus text"}},
)
async def prometheus(gateway: GatewayDep) -> Response:
    """Prometheus exposition; queue gauges are refreshed unless Prefect is down, the corrupt
    backups of each server from the repositories (MM_BACKUP_ROOT, MM_BACKUP_ROOTS)."""
    try:
        await _queues(gateway, None)
    except OrchestratorUnavailable:
        pass  # the gauges keep their last values; mm_prefect_call_seconds shows the failures
    await asyncio.to_thread(record_corrupt_backups, get_settings().paths.search_roots())
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
