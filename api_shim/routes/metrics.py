"""GET /api/metrics/queues and /api/metrics/system (any caller), GET /metrics (Prometheus)."""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from api_shim.access import CallerScope
from api_shim.finished_jobs import FinishedJobs
from api_shim.gateway import Gateway, GatewayError, OrchestratorUnavailable, Scope
from api_shim.gateway.finished import finished_jobs
from api_shim.metrics import record_backups, record_max_ages, record_queues, verdict
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
from tasks.core.errors import InventoryError
from tasks.core.inventory import Inventory, load_inventory
from tasks.core.settings import get_settings

log = logging.getLogger("api_shim.metrics")

router = APIRouter(tags=["metrics"])

#: When this process started, for the uptime in /api/metrics/system.
STARTED = time.monotonic()
#: The jobs that ended since this process started, each counted once (`mm_jobs_finished_total`).
FINISHED = FinishedJobs(datetime.now(UTC))


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


def _inventory(path: Path) -> Inventory | None:
    try:
        return load_inventory(path)
    except InventoryError as exc:
        # The max-age gauges keep their last values rather than vanish: an alert on a server
        # must not clear because someone broke the file.
        log.warning("/metrics: %s", exc)
        return None


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST: {}}, "description": "Prometheus text"}},
)
async def prometheus(gateway: GatewayDep) -> Response:
    """Prometheus exposition. From Prefect, unless it is down: the queue gauges and the jobs
    that ended since the last scrape; from the repositories (MM_BACKUP_ROOT, MM_BACKUP_ROOTS):
    corrupt and last completed backups; from the inventory: each schedule's max age."""
    read = partial(finished_jobs, gateway)
    for step in (_queues(gateway, None), FINISHED.scrape(read, datetime.now(UTC))):
        try:
            await step
        except OrchestratorUnavailable:
            pass  # the gauges keep their last values; mm_prefect_call_seconds shows the failures
    settings = get_settings()
    inventory = await asyncio.to_thread(_inventory, settings.paths.inventory)
    names = {s.id: s.name for s in inventory.servers} if inventory is not None else {}
    await asyncio.to_thread(record_backups, settings.paths.search_roots(), names)
    if inventory is not None:
        grace = timedelta(seconds=settings.notify.stale_grace_seconds)
        await record_max_ages(inventory, grace)
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
