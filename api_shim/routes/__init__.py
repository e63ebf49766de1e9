"""The HTTP routes; each module is one group of the original API's endpoints."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, Request

from api_shim.gateway import Gateway
from api_shim.schemas import ErrorEnvelope


async def get_gateway(request: Request) -> Gateway:
    """The app's one gateway, opened by its lifespan (`async`: no worker thread for it)."""
    gateway: Gateway = request.app.state.gateway
    return gateway


GatewayDep = Annotated[Gateway, Depends(get_gateway)]


def errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI entries for error answers, all in the envelope."""
    return {status: {"model": ErrorEnvelope} for status in statuses}
