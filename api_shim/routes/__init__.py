"""The HTTP routes; each module is one group of the original API's endpoints."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, Header, Request

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


IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        max_length=200,
        description="A repeated request with the same key returns the first one's job.",
    ),
]


def scoped_key(request: Request, user_id: str, key: str | None) -> str | None:
    """The caller's Idempotency-Key scoped by user and endpoint, so one user's key never
    returns another's job."""
    return f"api:{user_id}:{request.method} {request.url.path}:{key}" if key else None
