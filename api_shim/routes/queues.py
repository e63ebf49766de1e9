"""Admin: POST /api/queues/pause and /resume, for all queues or one."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body

from api_shim.auth import AdminCaller
from api_shim.gateway.admin import set_paused
from api_shim.routes import GatewayDep, errors
from api_shim.schemas import Envelope, PauseRequest, QueuePaused

router = APIRouter(prefix="/api/queues", tags=["queues"])


@router.post(
    "/pause",
    response_model=Envelope[list[QueuePaused]],
    responses=errors(400, 401, 403, 422, 503),
)
async def pause(
    caller: AdminCaller, gateway: GatewayDep, body: Annotated[PauseRequest | None, Body()] = None
) -> Envelope[list[QueuePaused]]:
    """Hold new jobs of one queue (`{"queue": "backup"}`) or all; running jobs go on."""
    queue = (body or PauseRequest()).queue
    data = await set_paused(gateway, queue, True)
    return Envelope(message=f"Paused {queue or 'all queues'}", data=data)


@router.post(
    "/resume",
    response_model=Envelope[list[QueuePaused]],
    responses=errors(400, 401, 403, 422, 503),
)
async def resume(
    caller: AdminCaller, gateway: GatewayDep, body: Annotated[PauseRequest | None, Body()] = None
) -> Envelope[list[QueuePaused]]:
    """Let held jobs of one queue (or all) start again."""
    queue = (body or PauseRequest()).queue
    data = await set_paused(gateway, queue, False)
    return Envelope(message=f"Resumed {queue or 'all queues'}", data=data)
