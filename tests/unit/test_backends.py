"""The one switch: MM_DATABASE_URL + MM_REDIS_URL -> Prefect's settings for scaled mode."""

from __future__ import annotations

import re

import pytest
from pydantic import ValidationError

from deployments.system.backends import prefect_env
from tasks.core.settings import BackendSettings


def test_embedded_by_default_adds_no_prefect_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    backend = BackendSettings()
    assert not backend.scaled
    assert backend.mode == "embedded"
    assert prefect_env(backend) == {}


def test_scaled_mode_sets_every_prefect_redis_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MM_DATABASE_URL", "postgresql+asyncpg://prefect@db:5432/prefect")
    monkeypatch.setenv("MM_REDIS_URL", "redis://:s%40cret@cache:6380/3")
    backend = BackendSettings()
    assert backend.scaled
    assert prefect_env(backend) == {
        "PREFECT_API_DATABASE_CONNECTION_URL": "postgresql+asyncpg://prefect@db:5432/prefect",
        "PREFECT_MESSAGING_BROKER": "prefect_redis.messaging",
        "PREFECT_MESSAGING_CACHE": "prefect_redis.messaging",
        "PREFECT_SERVER_EVENTS_CAUSAL_ORDERING": "prefect_redis.ordering",
        "PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE": "prefect_redis.lease_storage",
        "PREFECT_SERVER_WORKER_CHANNEL_CLEANUP_QUEUE_STORAGE": "prefect_redis.cleanup_queue",
        "PREFECT_SERVER_DOCKET_URL": "redis://:s%40cret@cache:6380/3",
        "PREFECT_REDIS_MESSAGING_HOST": "cache",
        "PREFECT_REDIS_MESSAGING_PORT": "6380",
        "PREFECT_REDIS_MESSAGING_DB": "3",
        "PREFECT_REDIS_MESSAGING_PASSWORD": "s@cret",
    }


def test_redis_defaults_to_port_6379_and_db_0() -> None:
    env = prefect_env(
        BackendSettings(database_url="postgresql+asyncpg://p@db/p", redis_url="redis://cache")
    )
    assert (env["PREFECT_REDIS_MESSAGING_PORT"], env["PREFECT_REDIS_MESSAGING_DB"]) == ("6379", "0")


@pytest.mark.parametrize(
    ("database_url", "redis_url", "message"),
    [
        ("postgresql+asyncpg://p@db/p", None, "set both"),
        (None, "redis://cache:6379/0", "set both"),
        ("postgresql://p@db/p", "redis://cache:6379/0", "postgresql+asyncpg://"),
        ("sqlite+aiosqlite:///x.db", "redis://cache:6379/0", "postgresql+asyncpg://"),
        ("postgresql+asyncpg://p@db/p", "http://cache:6379/0", "redis://HOST"),
        ("postgresql+asyncpg://p@db/p", "redis://cache:6379/zero", "must be a number"),
    ],
)
def test_half_or_wrong_settings_are_refused(
    database_url: str | None, redis_url: str | None, message: str
) -> None:
    with pytest.raises(ValidationError, match=re.escape(message)):
        BackendSettings(database_url=database_url, redis_url=redis_url)


def test_sqlite_fix_leaves_postgresql_alone() -> None:
    """deployments/system/prefect_server.py patches the SQLite configuration class, nothing else."""
    from prefect.server.database.configurations import (
        AioSqliteConfiguration,
        AsyncPostgresConfiguration,
    )

    from deployments.system.prefect_server import queue_sqlite_writers

    postgres = AsyncPostgresConfiguration.begin_transaction
    queue_sqlite_writers()
    assert AsyncPostgresConfiguration.begin_transaction is postgres
    assert getattr(AioSqliteConfiguration.begin_transaction, "_always_immediate", False)
