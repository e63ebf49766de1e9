"""`prefect server start`, with SQLite write transactions that wait their turn instead of failing.

Prefect opens its explicit SQLite transactions DEFERRED: one that reads, then writes after another
connection has written, gets "database is locked" at once, without waiting out the busy timeout
(WAL cannot upgrade a stale read snapshot). Under a handful of concurrent jobs that surfaced as
503 answers and runs that never got their state. Prefect's own comment in
`prefect/server/database/configurations.py` names the cure, IMMEDIATE transactions: they take
the write lock when they begin, and SQLite's busy timeout queues them. Implicit single-statement
reads are unchanged. PostgreSQL is untouched.
"""

from __future__ import annotations

import sys
from collections.abc import AsyncGenerator
from contextlib import asynccontextmanager
from typing import Any


def queue_sqlite_writers() -> None:
    """Make every explicit SQLite transaction of this process BEGIN IMMEDIATE."""
    from prefect.server.database.configurations import AioSqliteConfiguration

    deferred_or_immediate = AioSqliteConfiguration.begin_transaction
    if getattr(deferred_or_immediate, "_always_immediate", False):
        return

    @asynccontextmanager
    async def begin_transaction(
        self: AioSqliteConfiguration, session: Any, with_for_update: bool = False
    ) -> AsyncGenerator[Any, None]:
        async with deferred_or_immediate(self, session, with_for_update=True) as transaction:
            yield transaction

    begin_transaction._always_immediate = True  # type: ignore[attr-defined]
    AioSqliteConfiguration.begin_transaction = begin_transaction  # type: ignore[method-assign]


def main() -> None:
    """Run `prefect server start ARGS...` in this process, SQLite writers queued."""
    queue_sqlite_writers()
    from prefect.cli._app import app

    sys.argv = ["prefect", "server", "start", *sys.argv[1:]]
    app()


if __name__ == "__main__":
    main()
