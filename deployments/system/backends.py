"""The one switch between embedded mode (SQLite, in-memory messaging) and scaled mode.

Scaled mode is Prefect's own distributed setup: the server's database on PostgreSQL, and Redis
(prefect-redis) for messaging, the event cache and ordering, concurrency leases, the worker
channel cleanup queue and the docket of background tasks. Then several API processes and workers
on several hosts can share one Prefect. Set both variables to switch; unset, everything stays
embedded:

    MM_DATABASE_URL=postgresql+asyncpg://prefect@db.internal:5432/prefect
    MM_REDIS_URL=redis://redis.internal:6379/0

`Stack` (and so `make up`) turns them into the PREFECT_* settings below; a Prefect process that
is started by hand (systemd, compose) gets the same ones from `prefect_env()`, printed by
`python -m deployments.system.backends`.
"""

from __future__ import annotations

import shlex
import sys
from functools import lru_cache
from urllib.parse import unquote, urlsplit

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

#: The module of prefect-redis that implements each pluggable part of the server.
_REDIS_MODULES = {
    "PREFECT_MESSAGING_BROKER": "prefect_redis.messaging",
    "PREFECT_MESSAGING_CACHE": "prefect_redis.messaging",
    "PREFECT_SERVER_EVENTS_CAUSAL_ORDERING": "prefect_redis.ordering",
    "PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE": "prefect_redis.lease_storage",
    "PREFECT_SERVER_WORKER_CHANNEL_CLEANUP_QUEUE_STORAGE": "prefect_redis.cleanup_queue",
}


class BackendSettings(BaseSettings):
    """Where Prefect keeps its state: embedded (both unset) or scaled (both set)."""

    model_config = SettingsConfigDict(env_prefix="MM_", extra="ignore")

    database_url: str | None = Field(
        None, description="Prefect's database, postgresql+asyncpg://USER[:PASS]@HOST:PORT/DB."
    )
    redis_url: str | None = Field(
        None, description="Redis for Prefect's messaging and leases, redis://[:PASS@]HOST:PORT/DB."
    )

    @field_validator("database_url")
    @classmethod
    def _asyncpg(cls, url: str | None) -> str | None:
        if url is not None and not url.startswith("postgresql+asyncpg://"):
            raise ValueError("MM_DATABASE_URL must start with postgresql+asyncpg://")
        return url

    @field_validator("redis_url")
    @classmethod
    def _redis(cls, url: str | None) -> str | None:
        if url is not None:
            parts = urlsplit(url)
            if parts.scheme != "redis" or not parts.hostname:
                raise ValueError("MM_REDIS_URL must look like redis://HOST:PORT/DB")
            _db(url)
        return url

    @model_validator(mode="after")
    def _both_or_neither(self) -> BackendSettings:
        if (self.database_url is None) != (self.redis_url is None):
            raise ValueError(
                "set both MM_DATABASE_URL and MM_REDIS_URL (scaled mode) or neither (embedded):"
                " several Prefect processes need both PostgreSQL and Redis"
            )
        return self

    @property
    def scaled(self) -> bool:
        return self.database_url is not None

    @property
    def mode(self) -> str:
        return "scaled" if self.scaled else "embedded"

    def prefect_env(self) -> dict[str, str]:
        """The PREFECT_* settings of every Prefect process (server, services, workers, runs)."""
        if self.database_url is None or self.redis_url is None:
            return {}
        parts = urlsplit(self.redis_url)
        env = {
            "PREFECT_API_DATABASE_CONNECTION_URL": self.database_url,
            **_REDIS_MODULES,
            "PREFECT_SERVER_DOCKET_URL": self.redis_url,
            "PREFECT_REDIS_MESSAGING_HOST": parts.hostname or "localhost",
            "PREFECT_REDIS_MESSAGING_PORT": str(parts.port or 6379),
            "PREFECT_REDIS_MESSAGING_DB": str(_db(self.redis_url)),
        }
        if parts.username:
            env["PREFECT_REDIS_MESSAGING_USERNAME"] = unquote(parts.username)
        if parts.password:
            env["PREFECT_REDIS_MESSAGING_PASSWORD"] = unquote(parts.password)
        return env


def _db(url: str) -> int:
    path = urlsplit(url).path.strip("/")
    if not path:
        return 0
    if not path.isdigit():
        raise ValueError(f"the Redis database in {url!r} must be a number")
    return int(path)


@lru_cache
def get_backend_settings() -> BackendSettings:
    """The backend of this process, read once from the environment."""
    return BackendSettings()


def main() -> int:
    """Print the PREFECT_* settings of the configured backend as shell assignments."""
    for key, value in get_backend_settings().prefect_env().items():
        sys.stdout.write(f"{key}={shlex.quote(value)}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
