"""`prefect server start`, with SQLite writers queued and one index of ours for job counts.

Prefect opens its explicit SQLite transactions DEFERRED: one that reads, then writes after another
connection has written, gets "database is locked" at once, without waiting out the busy timeout
(WAL cannot upgrade a stale read snapshot). Under a handful of concurrent jobs that surfaced as
503 answers and runs that never got their state. Prefect's own comment in
`prefect/server/database/configurations.py` names the cure, IMMEDIATE transactions: they take
the write lock when they begin, and SQLite's busy timeout queues them. Implicit single-statement
reads are unchanged. PostgreSQL is untouched.

The API's job statistics count flow runs by deployment and state type (24 counts per call).
Prefect indexes the two columns apart, so each count reads every matching row: 1.4 s for
`stats/all` on 100,000 runs. One composite index lets a count read the index alone (0.26 s).
It is created after Prefect's own migrations, under a name of ours, on SQLite and PostgreSQL.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import AsyncGenerator
from contextlib import asynccontextmanager
from typing import Any

logger = logging.getLogger(__name__)

#: Indexes Prefect does not have and our queries need; `IF NOT EXISTS` keeps them idempotent.
INDEXES = (
    "CREATE INDEX IF NOT EXISTS ix_mm_flow_run__deployment_state"
    " ON flow_run (deployment_id, state_type)",
)


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


async def prepare_database() -> None:
    """Prefect's migrations (as the server runs them at start), then our indexes."""
    import sqlalchemy as sa
    from prefect.server.database import provide_database_interface

    db = provide_database_interface()
    await db.create_db()
    engine = await db.engine()
    for statement in INDEXES:
        try:
            async with engine.begin() as connection:
                await connection.execute(sa.text(statement))
        except sa.exc.DBAPIError as exc:
            # Another server process sharing the database may be creating it at this moment.
            logger.warning("could not create an index (%s); counts may be slower", exc)
    await engine.dispose()


def main() -> None:
    """Run `prefect server start ARGS...` in this process, SQLite writers queued."""
    queue_sqlite_writers()
    asyncio.run(prepare_database())
    from prefect.cli._app import app

    sys.argv = ["prefect", "server", "start", *sys.argv[1:]]
    app()


if __name__ == "__main__":
    main()
