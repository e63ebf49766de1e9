"""The one switch between embedded mode (SQLite, in-memory messaging) and scaled mode.

Scaled mode is Prefect's own distributed setup: the server's database on PostgreSQL, and Redis
(prefect-redis) for messaging, the event cache and ordering, concurrency leases, the worker
channel cleanup queue and the docket of background tasks. Then several API processes and workers
on several hosts can share one Prefect. Set both variables to switch; unset, everything stays
embedded:

    MM_DATABASE_URL=postgresql+asyncpg://prefect@db.internal:5432/prefect
    MM_REDIS_URL=redis://redis.internal:6379/0

The variables are declared with the others (tasks/core/settings.py, `BackendSettings`). `Stack`
(and so `make up`) turns them into the PREFECT_* settings below; a Prefect process that
is started by hand (systemd, compose) gets the same ones from `prefect_env()`, printed by
`python -m deployments.system.backends`.
"""

from __future__ import annotations

import shlex
import sys
from urllib.parse import unquote, urlsplit

from tasks.core.settings import BackendSettings, get_settings, redis_db

#: The module of prefect-redis that implements each pluggable part of the server.
_REDIS_MODULES = {
    "PREFECT_MESSAGING_BROKER": "prefect_redis.messaging",
    "PREFECT_MESSAGING_CACHE": "prefect_redis.messaging",
    "PREFECT_SERVER_EVENTS_CAUSAL_ORDERING": "prefect_redis.ordering",
    "PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE": "prefect_redis.lease_storage",
    "PREFECT_SERVER_WORKER_CHANNEL_CLEANUP_QUEUE_STORAGE": "prefect_redis.cleanup_queue",
}


def prefect_env(backend: BackendSettings) -> dict[str, str]:
    """The PREFECT_* settings of every Prefect process (server, services, workers, runs)."""
    if backend.database_url is None or backend.redis_url is None:
        return {}
    parts = urlsplit(backend.redis_url)
    env = {
        "PREFECT_API_DATABASE_CONNECTION_URL": backend.database_url,
        **_REDIS_MODULES,
        "PREFECT_SERVER_DOCKET_URL": backend.redis_url,
        "PREFECT_REDIS_MESSAGING_HOST": parts.hostname or "localhost",
        "PREFECT_REDIS_MESSAGING_PORT": str(parts.port or 6379),
        "PREFECT_REDIS_MESSAGING_DB": str(redis_db(backend.redis_url)),
    }
    if parts.username:
        env["PREFECT_REDIS_MESSAGING_USERNAME"] = unquote(parts.username)
    if parts.password:
        env["PREFECT_REDIS_MESSAGING_PASSWORD"] = unquote(parts.password)
    return env


def main() -> int:
    """Print the PREFECT_* settings of the configured backend as shell assignments."""
    for key, value in prefect_env(get_settings().backend).items():
        sys.stdout.write(f"{key}={shlex.quote(value)}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
