"""PostgreSQL and Redis for scaled-mode tests: a fresh database per session, a Redis DB of ours.

The machine's services (PostgreSQL on 127.0.0.1:5432 with trust auth, Redis on 127.0.0.1:6379)
are used as they are; `.ci/run` starts them when they are down. Nothing here skips: a service
that does not answer fails the session with the address it tried.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import asyncpg
import redis

from tasks.core.settings import BackendSettings

#: The maintenance connection (not an MM_ variable: the root conftest clears those).
POSTGRES_ADMIN_URL = os.environ.get(
    "MEDICINE_MAN_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres"
)
REDIS_HOST = os.environ.get("MEDICINE_MAN_TEST_REDIS_HOST", "127.0.0.1")
REDIS_PORT = int(os.environ.get("MEDICINE_MAN_TEST_REDIS_PORT", "6379"))
#: Redis databases of ours, flushed before and after use: the tests', the benchmark's, and that
#: of the Redis-outage test's own stack (tests/integration/test_redis_outage.py).
REDIS_DB_TESTS = 11
REDIS_DB_BENCH = 12
REDIS_DB_OUTAGE = 13


def auth_string() -> str:
    """A fresh Prefect auth string: scaled mode refuses to start without one given."""
    return f"admin:{secrets.token_urlsafe(32)}"


async def _admin(statement: str) -> None:
    connection = await asyncpg.connect(POSTGRES_ADMIN_URL, timeout=10)
    try:
        await connection.execute(statement)
    finally:
        await connection.close()


def _flush(db: int) -> None:
    client = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=db, socket_timeout=10)
    try:
        client.flushdb()
    finally:
        client.close()


@contextmanager
def scaled_backend(
    redis_db: int = REDIS_DB_TESTS, prefix: str = "mm_test"
) -> Iterator[BackendSettings]:
    """A new PostgreSQL database and an empty Redis DB for one session; both gone afterwards."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    try:
        asyncio.run(_admin(f'CREATE DATABASE "{name}"'))
    except (OSError, asyncpg.PostgresError) as exc:
        raise RuntimeError(f"PostgreSQL at {POSTGRES_ADMIN_URL} is needed: {exc}") from exc
    try:
        try:
            _flush(redis_db)
        except redis.RedisError as exc:
            raise RuntimeError(f"Redis at {REDIS_HOST}:{REDIS_PORT} is needed: {exc}") from exc
        host_port = POSTGRES_ADMIN_URL.split("@", 1)[1].rsplit("/", 1)[0]
        user = POSTGRES_ADMIN_URL.split("://", 1)[1].split("@", 1)[0]
        yield BackendSettings(
            database_url=f"postgresql+asyncpg://{user}@{host_port}/{name}",
            redis_url=f"redis://{REDIS_HOST}:{REDIS_PORT}/{redis_db}",
        )
    finally:
        asyncio.run(_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        _flush(redis_db)
