"""The shim's side of auth: the bearer header of each request, checked by tasks/core/callers.py."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from tasks.core.callers import AuthError, Caller, verify_token
from tasks.core.settings import get_settings


class Forbidden(Exception):
    """The caller is authenticated but may not do this (403)."""

    def __init__(self, message: str = "this operation is for admins only") -> None:
        super().__init__(message)
        self.message = message


#: Declares the bearer scheme in the OpenAPI document; the header is parsed below, so each
#: kind of bad header gets its own message.
_bearer = HTTPBearer(auto_error=False, description="A JWT signed with HS256 (MM_JWT_SECRET).")


# The dependencies are `async` although they never wait: FastAPI runs a plain `def` dependency
# in a worker thread, a thread hop per request for microseconds of work.
async def current_caller(
    request: Request,
    _declared: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Caller:
    """The caller of this request; `AuthError` (401) unless it has a valid bearer token."""
    header = request.headers.get("authorization")
    if not header:
        raise AuthError("missing Authorization header; send 'Authorization: Bearer <token>'")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise AuthError("Authorization header must be 'Bearer <token>'")
    settings = get_settings().api
    return verify_token(
        token.strip(),
        settings.secret,
        issuer=settings.jwt_issuer,
        audience=settings.jwt_audience,
    )


async def admin_caller(caller: Annotated[Caller, Depends(current_caller)]) -> Caller:
    """The caller, if an admin; `Forbidden` (403) otherwise."""
    if not caller.is_admin:
        raise Forbidden()
    return caller


CurrentCaller = Annotated[Caller, Depends(current_caller)]
AdminCaller = Annotated[Caller, Depends(admin_caller)]
