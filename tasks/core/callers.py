"""Who calls: roles, callers and their bearer JWTs (HS256, claims `sub`, `role`, `exp`).

Only HS256 is accepted, so a token signed with another algorithm (or `alg: none`) is forged. A
token without `exp` is refused. With an issuer or audience given (the shim's MM_JWT_ISSUER,
MM_JWT_AUDIENCE), tokens must carry `iss` or `aud` and match it: tokens minted for another
service with the same secret are no good here. The shim verifies with this module and `make up`
mints its dev token with it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum

import jwt

ALGORITHM = "HS256"


class Role(StrEnum):
    """What a caller may do."""

    #: Sees and acts on every job; pauses queues and cleans old jobs.
    ADMIN = "admin"
    #: Sees and acts on the jobs they enqueued.
    USER = "user"


class AuthError(Exception):
    """The request carries no valid token (401)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass(frozen=True)
class Caller:
    """Who is calling, from a verified token."""

    user_id: str
    role: Role

    @property
    def is_admin(self) -> bool:
        return self.role is Role.ADMIN

    @property
    def owner(self) -> str | None:
        """Whose jobs this caller sees: None for all (an admin)."""
        return None if self.is_admin else self.user_id


def mint_token(
    secret: str,
    user_id: str,
    role: Role | str = Role.USER,
    ttl: timedelta = timedelta(hours=12),
    *,
    issuer: str | None = None,
    audience: str | None = None,
) -> str:
    """A signed token, for `make up`'s dev token and for tests; `issuer` and `audience` as the
    shim's MM_JWT_ISSUER and MM_JWT_AUDIENCE, when those are set."""
    claims: dict[str, object] = {"sub": user_id, "role": str(role), "exp": datetime.now(UTC) + ttl}
    if issuer is not None:
        claims["iss"] = issuer
    if audience is not None:
        claims["aud"] = audience
    return jwt.encode(claims, secret, algorithm=ALGORITHM)


def verify_token(
    token: str, secret: str, *, issuer: str | None = None, audience: str | None = None
) -> Caller:
    """The caller a token names, or `AuthError` saying what is wrong with it.

    `issuer`, `audience`: when given, the token's `iss`, `aud` must be there and match.
    """
    required = ["sub", "role", "exp"]
    required += ["iss"] if issuer is not None else []
    required += ["aud"] if audience is not None else []
    try:
        claims = jwt.decode(
            token,
            secret,
            algorithms=[ALGORITHM],
            issuer=issuer,
            audience=audience,
            options={"require": required},
        )
    except jwt.ExpiredSignatureError:
        raise AuthError("token expired") from None
    except jwt.MissingRequiredClaimError as exc:
        raise AuthError(f"token lacks the {exc.claim!r} claim") from None
    except jwt.InvalidIssuerError:
        raise AuthError("token's 'iss' claim is not this API's issuer") from None
    except jwt.InvalidAudienceError:
        raise AuthError("token's 'aud' claim is not this API's audience") from None
    except jwt.InvalidTokenError:
        raise AuthError("invalid token: bad signature, algorithm or format") from None
    sub, role = claims.get("sub"), claims.get("role")
    if not isinstance(sub, str) or not sub:
        raise AuthError("token's 'sub' claim must be a non-empty string")
    try:
        return Caller(user_id=sub, role=Role(str(role)))
    except ValueError:
        raise AuthError("token's 'role' claim must be 'admin' or 'user'") from None
