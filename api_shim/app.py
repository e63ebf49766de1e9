"""The API shim: the original job API of Medicine Man, over Prefect flow runs.

    MM_JWT_SECRET=... PREFECT_API_URL=http://127.0.0.1:4200/api PREFECT_API_AUTH_STRING=... \
        uvicorn api_shim.app:app --port 3000

Every answer is in the `{success, message, data}` envelope, errors too; no error leaves as a
500 with a stack trace.
"""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

from api_shim.auth import Forbidden
from api_shim.body_guard import BodyGuard
from api_shim.gateway import (
    Gateway,
    GatewayError,
    JobConflict,
    JobNotFound,
    OrchestratorUnavailable,
)
from api_shim.metrics import RequestTiming
from api_shim.routes import backups, checks, health, jobs, metrics, queues, servers
from api_shim.routes.jobs import InvalidQuery
from api_shim.schemas import ErrorData, ErrorDetail, ErrorEnvelope
from deployments.control.csrf import serialize_token_fetches
from tasks.core.callers import AuthError, Role, mint_token
from tasks.core.errors import InventoryError, ServerNotFound
from tasks.core.settings import get_settings

log = logging.getLogger("api_shim")


class NoPrefectUrl(RuntimeError):
    """PREFECT_API_URL is not set; point it at the Prefect server (e.g. http://127.0.0.1:4200/api)."""


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings = get_settings().api
    secret = settings.secret  # refuses to start without a safe secret outside dev mode
    serialize_token_fetches()  # many requests share the gateway's one Prefect client
    api_url = PREFECT_API_URL.value()
    if not api_url:
        # Without it the Prefect client would start an ephemeral server of its own.
        raise NoPrefectUrl()
    if settings.generated_secret:
        token = mint_token(
            secret,
            "dev-admin",
            Role.ADMIN,
            issuer=settings.jwt_issuer,
            audience=settings.jwt_audience,
        )
        log.warning("MM_API_DEV: generated a JWT secret; dev admin token: %s", token)
    auth_string = PREFECT_API_AUTH_STRING.value()
    async with Gateway.open(api_url, settings.prefect_timeout, auth_string) as gateway:
        app.state.gateway = gateway
        yield


#: The methods of OpenAPI's path items.
_METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}


def _methods_of(item: dict[str, Any]) -> set[str]:
    return {method.upper() for method in item if method in _METHODS}


def _allowed_methods(path: str) -> list[str]:
    """The methods the OpenAPI document lists for `path`: a fixed path's own
    (`/api/jobs/cancel`), else those of each path with parameters that it fits
    (`/api/jobs/{job_id}`: GET and DELETE, where Starlette's `Allow` names the first route's)."""
    paths = app.openapi()["paths"]
    if path in paths:
        return sorted(_methods_of(paths[path]))
    fits = [item for template, item in paths.items() if re.fullmatch(_pattern(template), path)]
    return sorted(set().union(*(_methods_of(item) for item in fits)))


def _pattern(template: str) -> str:
    """A path template as a regular expression: each `{parameter}` is one path segment."""
    parts = re.split(r"(\{[^/}]+\})", template)
    return "".join("[^/]+" if part.startswith("{") else re.escape(part) for part in parts)


def _not_allowed(method: str, path: str) -> JSONResponse:
    # With the `Allow` header that RFC 9110 asks of a 405.
    allowed = ", ".join(_allowed_methods(path))
    return _error(405, f"method {method} not allowed on {path}", headers={"Allow": allowed})


class FixedPathMethods:
    """A 405 for a method that a fixed path does not take (`GET /api/jobs/cancel`), before the
    router tries the paths with parameters, where it would be `GET /api/jobs/{job_id}` with a
    bad id (a 422), and before the caller is checked, as Starlette's own 405s are."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            item = app.openapi()["paths"].get(scope["path"])  # built once, then kept
            if item is not None and scope["method"] not in _methods_of(item):
                await _not_allowed(scope["method"], scope["path"])(scope, receive, send)
                return
        await self.app(scope, receive, send)


app = FastAPI(
    title="Medicine Man Jobs API",
    version="1.0.0",
    description="Backups, scans and updates of servers as jobs; the original BullMQ API over "
    "Prefect flow runs. Authenticate with `Authorization: Bearer <jwt>` (HS256).",
    lifespan=lifespan,
    # No 307 to the path with(out) a slash: an id like `..%2F` gets a 404 in the envelope.
    redirect_slashes=False,
)
for module in (health, servers, jobs, backups, queues, metrics, checks):
    app.include_router(module.router)
app.add_middleware(BodyGuard, limit=lambda: get_settings().api.max_body_bytes)
app.add_middleware(FixedPathMethods)
# Added last, so outermost: the time includes the body guard's.
app.add_middleware(RequestTiming)


def _error(
    status: int,
    message: str,
    details: list[ErrorDetail] | None = None,
    retry_after: int | None = None,
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    body = ErrorEnvelope(message=message, data=ErrorData(errors=details) if details else None)
    headers = {**(headers or {}), **({"WWW-Authenticate": "Bearer"} if status == 401 else {})}
    if retry_after is not None:
        headers["Retry-After"] = str(retry_after)
    return JSONResponse(body.model_dump(mode="json"), status_code=status, headers=headers or None)


@app.exception_handler(AuthError)
async def _auth(request: Request, exc: AuthError) -> JSONResponse:
    return _error(401, exc.message)


@app.exception_handler(Forbidden)
async def _forbidden(request: Request, exc: Forbidden) -> JSONResponse:
    return _error(403, exc.message)


@app.exception_handler(GatewayError)
async def _gateway(request: Request, exc: GatewayError) -> JSONResponse:
    if isinstance(exc, JobNotFound):
        return _error(404, exc.message)
    if isinstance(exc, JobConflict):
        return _error(409, exc.message)
    retry_after = exc.retry_after if isinstance(exc, OrchestratorUnavailable) else None
    return _error(503, exc.message, retry_after=retry_after)


@app.exception_handler(ServerNotFound)
async def _no_server(request: Request, exc: ServerNotFound) -> JSONResponse:
    return _error(404, str(exc))


@app.exception_handler(InventoryError)
async def _inventory(request: Request, exc: InventoryError) -> JSONResponse:
    return _error(503, f"the server inventory cannot be read: {exc}")


@app.exception_handler(InvalidQuery)
async def _invalid_query(request: Request, exc: InvalidQuery) -> JSONResponse:
    return _error(400, exc.message, [ErrorDetail(field=exc.field, message=exc.message)])


@app.exception_handler(RequestValidationError)
async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
    details = [_detail(error) for error in exc.errors()]
    summary = "; ".join(f"{d.field}: {d.message}" for d in details)
    return _error(422, f"invalid request: {summary}", details)


def _detail(error: Any) -> ErrorDetail:
    if error["type"] == "json_invalid":
        # loc is ("body", <character offset>).
        reason = error.get("ctx", {}).get("error", "not JSON")
        at = error["loc"][-1]
        return ErrorDetail(field="body", message=f"malformed JSON: {reason} at character {at}")
    return ErrorDetail(
        # ("body", "compression") -> "compression"; ("query", "limit") -> "limit".
        field=".".join(str(p) for p in error["loc"][1:]) or str(error["loc"][0]),
        message=str(error["msg"]).removeprefix("Value error, "),
    )


@app.exception_handler(HTTPException)
async def _http(request: Request, exc: HTTPException) -> JSONResponse:
    if exc.status_code == 405:
        return _not_allowed(request.method, request.url.path)
    if exc.status_code == 404 and request.scope.get("route") is None:
        # No route matched, e.g. an id with a slash (`..%2F..`) in it.
        return _error(404, f"no endpoint {request.method} {request.url.path}")
    return _error(exc.status_code, str(exc.detail))


@app.exception_handler(Exception)
async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unexpected error on %s %s", request.method, request.url.path)
    return _error(500, "internal error; the shim's log has the details")
