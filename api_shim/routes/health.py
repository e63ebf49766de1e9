"""GET /health: no auth; whether the shim can reach Prefect."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from api_shim.routes import GatewayDep, errors
from api_shim.schemas import Envelope, ServiceHealth

router = APIRouter(tags=["health"])


@router.get("/health", response_model=Envelope[ServiceHealth], responses=errors(503))
async def health(gateway: GatewayDep) -> JSONResponse:
    """200 while Prefect answers, 503 (same body) while it does not."""
    prefect = await gateway.status()
    body = Envelope[ServiceHealth](
        success=prefect.reachable,
        message="API healthy" if prefect.reachable else f"Prefect unavailable: {prefect.message}",
        data=ServiceHealth(status="ok" if prefect.reachable else "unavailable", prefect=prefect),
    )
    return JSONResponse(
        body.model_dump(mode="json", by_alias=True), 200 if prefect.reachable else 503
    )
