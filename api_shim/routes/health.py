"""GET /health and /health/live: no auth; readiness and liveness probes."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from api_shim.routes import GatewayDep, errors
from api_shim.schemas import Envelope, Liveness, ServiceHealth

router = APIRouter(tags=["health"])


@router.get("/health", response_model=Envelope[ServiceHealth], responses=errors(503))
async def health(gateway: GatewayDep) -> JSONResponse:
    """200 once an enqueue would be accepted: Prefect answers and has the pools, their work
    queues and the deployments; 503 (same body) naming what is missing otherwise."""
    found = await gateway.health()
    if found.status == "ok":
        message = "API ready"
    elif found.status == "unavailable":
        message = "not ready: the Prefect API is unavailable (the shim's log says why)"
    else:
        message = (
            f"not ready: Prefect lacks {', '.join(found.missing)}; "
            "run the bootstrap (`make up` or `python -m deployments.control.bootstrap`)"
        )
    body = Envelope[ServiceHealth](success=found.status == "ok", message=message, data=found)
    status = 200 if found.status == "ok" else 503
    return JSONResponse(body.model_dump(mode="json", by_alias=True), status)


@router.get("/health/live", response_model=Envelope[Liveness])
async def live() -> Envelope[Liveness]:
    """200 while this process serves requests; asks Prefect nothing, so that a liveness probe
    does not restart the shim during a Prefect outage (which a restart would not end)."""
    return Envelope[Liveness](message="API alive", data=Liveness())
