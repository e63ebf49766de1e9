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

After a restart (embedded mode), the automations' triggers would hold each run's next state
change back for 15 minutes, waiting for the event of its previous state, which only the process
before saw: the states stored before this start count as seen (`remember_earlier_states`).

CSRF tokens, checked by Prefect's middleware in the database on every change, are checked
against the copy read once (`remember_csrf_tokens`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
from collections import OrderedDict
from collections.abc import AsyncGenerator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

logger = logging.getLogger(__name__)

#: Indexes Prefect does not have and our queries need; `IF NOT EXISTS` keeps them idempotent.
INDEXES = (
    "CREATE INDEX IF NOT EXISTS ix_mm_flow_run__deployment_state"
    " ON flow_run (deployment_id, state_type)",
)


#: Seconds a transaction waits for its turn in the queue before it goes ahead anyway and leaves
#: the wait to SQLite's busy timeout (a guard against a transaction that waits for another one).
TURN_TIMEOUT = 30.0

_turns: dict[asyncio.AbstractEventLoop, asyncio.Lock] = {}
_holder: dict[asyncio.AbstractEventLoop, asyncio.Task[Any] | None] = {}


@asynccontextmanager
async def _turn() -> AsyncGenerator[None, None]:
    """One explicit transaction at a time per event loop, first come first served."""
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    lock = _turns.setdefault(loop, asyncio.Lock())
    if _holder.get(loop) is task:
        # Nested in a transaction of the same task: SQLite decides, as without the queue.
        yield
        return
    try:
        async with asyncio.timeout(TURN_TIMEOUT):
            await lock.acquire()
    except TimeoutError:
        logger.warning("a transaction waited %.0f s for its turn; going ahead", TURN_TIMEOUT)
        yield
        return
    _holder[loop] = task
    try:
        yield
    finally:
        _holder[loop] = None
        lock.release()


def queue_sqlite_writers() -> None:
    """Make every explicit SQLite transaction of this process BEGIN IMMEDIATE, in turn."""
    from prefect.server.database.configurations import SQLITE_BEGIN_MODE, AioSqliteConfiguration

    deferred_or_immediate = AioSqliteConfiguration.begin_transaction
    if getattr(deferred_or_immediate, "_always_immediate", False):
        return

    @asynccontextmanager
    async def begin_transaction(
        self: AioSqliteConfiguration, session: Any, with_for_update: bool = False
    ) -> AsyncGenerator[Any, None]:
        async with (
            _turn(),
            deferred_or_immediate(self, session, with_for_update=True) as transaction,
        ):
            # BEGIN IMMEDIATE now, on this session's connection. Prefect passes the BEGIN mode
            # in a context variable that sessions opened inside the block inherit: a read in a
            # second session (Prefect does that, e.g. when a work queue is paused) would begin
            # IMMEDIATE too and wait for this very transaction until SQLite gives up (60 s).
            await session.connection()
            inherited = SQLITE_BEGIN_MODE.set("DEFERRED")
            try:
                yield transaction
            finally:
                SQLITE_BEGIN_MODE.reset(inherited)

    begin_transaction._always_immediate = True  # type: ignore[attr-defined]
    AioSqliteConfiguration.begin_transaction = begin_transaction  # type: ignore[method-assign]


#: Schemas that passed the check against their meta-schema, as canonical JSON (a bounded cache).
_CHECKED_SCHEMAS: OrderedDict[str, None] = OrderedDict()
CHECKED_SCHEMAS_KEPT = 256


def remember_schema_checks() -> None:
    """Check each JSON schema against its meta-schema once, not on every flow run created.

    Creating a run from a deployment validates the job variables against the work pool's
    schema, and Prefect's validator first checks that schema against the JSON Schema
    meta-schema: ~70 % of the server's CPU for each created run (50-70 ms on 2 busy cores),
    spent again and again on the same few schemas. A schema that passed is remembered; one
    that fails is checked (and refused) every time, as before.
    """
    from prefect.utilities.schema_tools import validation

    validator = validation._VALIDATOR
    check = validator.check_schema
    if getattr(check, "_remembers", False):
        return

    def check_schema(schema: Any, *args: Any, **kwargs: Any) -> None:
        options = (tuple(map(id, args)), tuple(sorted((k, id(v)) for k, v in kwargs.items())))
        key = json.dumps(schema, sort_keys=True, default=repr) + repr(options)
        if key in _CHECKED_SCHEMAS:
            _CHECKED_SCHEMAS.move_to_end(key)
            return
        check(schema, *args, **kwargs)
        _CHECKED_SCHEMAS[key] = None
        if len(_CHECKED_SCHEMAS) > CHECKED_SCHEMAS_KEPT:
            _CHECKED_SCHEMAS.popitem(last=False)

    check_schema._remembers = True  # type: ignore[attr-defined]
    validator.check_schema = check_schema


#: CSRF tokens read from the database, by client id: (token, expiration); a bounded cache.
_CSRF_TOKENS: OrderedDict[str, tuple[str, datetime]] = OrderedDict()
CSRF_TOKENS_KEPT = 4096
#: The requests Prefect's CSRF middleware checks.
_CHANGES = frozenset({"POST", "PUT", "PATCH", "DELETE"})


def remember_csrf_tokens() -> None:
    """Check a change's CSRF token against the copy this process read, not the database.

    With CSRF protection on (the stack turns it on), Prefect's middleware opens a database
    session and reads the client's token for every request that changes something: about 20 a
    quick scan, which with the token fetches cost the server a third more CPU per scan (1.15 ->
    1.52 CPU-s on a slow machine, bench.run_cost). A client sends the same token until it
    expires, so each token read from the database (by the middleware, or when it is made) is
    kept; a request whose token equals the kept one and is not expired goes on. Any other
    (missing, unknown, a client's newer token made through another API process) takes
    Prefect's own path to the database, as before, so nothing is accepted that it would refuse.
    """
    import hmac

    from prefect.server.api import middleware
    from prefect.server.models import csrf_token

    read: Any = csrf_token.read_token_for_client
    if getattr(read, "_remembers", False):
        return

    async def read_and_keep(*args: Any, **kwargs: Any) -> Any:
        token = await read(*args, **kwargs)
        if token is not None:
            _CSRF_TOKENS[token.client] = (token.token, token.expiration)
            _CSRF_TOKENS.move_to_end(token.client)
            if len(_CSRF_TOKENS) > CSRF_TOKENS_KEPT:
                _CSRF_TOKENS.popitem(last=False)
        return token

    read_and_keep._remembers = True  # type: ignore[attr-defined]
    csrf_token.read_token_for_client = read_and_keep  # the middleware looks it up per call
    dispatch = middleware.CsrfMiddleware.dispatch

    async def dispatch_kept(self: Any, request: Any, call_next: Any) -> Any:
        if request.method in _CHANGES:
            client = request.headers.get("Prefect-Csrf-Client")
            sent = request.headers.get("Prefect-Csrf-Token")
            kept = _CSRF_TOKENS.get(client) if client else None
            if (
                kept is not None
                and sent is not None
                and hmac.compare_digest(kept[0], sent)
                and kept[1] > datetime.now(UTC)
            ):
                return await call_next(request)
        return await dispatch(self, request, call_next)

    # Before the app exists: Starlette binds `dispatch` when the middleware is built.
    middleware.CsrfMiddleware.dispatch = dispatch_kept  # type: ignore[method-assign]


async def prepare_database() -> None:
    """Prefect's migrations (as the server runs them at start), then our indexes; the states
    stored before this start counted as seen (`remember_earlier_states`)."""
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
    await remember_earlier_events()
    await engine.dispose()


#: Prefect settings of ours, unless the environment sets them: the services that record task
#: runs and events write in batches of up to this many rows at least once a second. Prefect's
#: defaults (one task-run event per transaction, events every 5 s) made the task-run recorder
#: alone hold SQLite's write lock for ~60 % of a burst (1,092 transactions for 73 jobs).
BATCHED_SERVICES = {
    "PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_BATCH_SIZE": "100",
    "PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_FLUSH_INTERVAL": "1",
    "PREFECT_SERVER_SERVICES_EVENT_PERSISTER_BATCH_SIZE": "200",
    "PREFECT_SERVER_SERVICES_EVENT_PERSISTER_FLUSH_INTERVAL": "1",
}


#: A schedule shows its next run as one delayed job, as the original's repeatable jobs do:
#: Prefect's scheduler keeps at least 3 runs and an hour ahead by default (a daily backup of
#: 300 servers showed 900 delayed jobs). One run, and runs until a scheduler loop (60 s) ahead,
#: so that the next one exists before it is due: a schedule more frequent than a minute shows
#: the runs of its next minute.
ONE_RUN_AHEAD = {
    "PREFECT_SERVER_SERVICES_SCHEDULER_MIN_RUNS": "1",
    "PREFECT_SERVER_SERVICES_SCHEDULER_MIN_SCHEDULED_TIME": "PT60S",
}


#: At most this many earlier states are marked as seen (Prefect's own cache holds 10,000).
EARLIER_STATES_KEPT = 5000


async def earlier_flow_run_states() -> list[UUID]:
    """Ids of the flow-run states of the last `PRECEDING_EVENT_LOOKBACK`, newest first."""
    import sqlalchemy as sa
    from prefect.server.database import provide_database_interface
    from prefect.server.events.ordering import PRECEDING_EVENT_LOOKBACK

    db = provide_database_interface()
    since = datetime.now(UTC) - PRECEDING_EVENT_LOOKBACK
    query = (
        sa.select(db.FlowRunState.id)
        .where(db.FlowRunState.timestamp >= since)
        .order_by(db.FlowRunState.timestamp.desc())
        .limit(EARLIER_STATES_KEPT)
    )
    async with db.session_context() as session:
        return list((await session.execute(query)).scalars().all())


def remember_earlier_states(ordering: Any, state_ids: list[UUID]) -> None:
    """Count the state-change events of `state_ids` as seen by the triggers' causal ordering.

    A flow run's state-change event names the one of its previous state as the event it
    follows, and the automations' triggers hold an event back until they have seen that one,
    for up to 15 minutes. The in-memory bookkeeping of seen events (embedded mode) starts
    empty with each server process, so after a restart the first state change of every run
    that was under way waits 15 minutes: a run crashed by the stalled-run automation was run
    again only then. The events of states stored before this process started went through the
    triggers of the process before, or died with it; none of them can still arrive here.
    """
    for state_id in state_ids:
        ordering._seen_events[state_id] = True


async def remember_earlier_events() -> None:
    """`remember_earlier_states` for the triggers, if their causal ordering is in memory."""
    from prefect.server.events.ordering import memory
    from prefect.settings import get_current_settings

    if get_current_settings().server.events.causal_ordering != memory.__name__:
        return  # Redis (scaled mode) keeps what it has seen across restarts.
    triggers = memory.CausalOrdering(scope="triggers")
    remember_earlier_states(triggers, await earlier_flow_run_states())


def main() -> None:
    """Run `prefect server start ARGS...` in this process, SQLite writers queued."""
    for name, value in {**BATCHED_SERVICES, **ONE_RUN_AHEAD}.items():
        os.environ.setdefault(name, value)
    queue_sqlite_writers()
    remember_schema_checks()
    remember_csrf_tokens()
    asyncio.run(prepare_database())
    from prefect.cli._app import app

    sys.argv = ["prefect", "server", "start", *sys.argv[1:]]
    app()


if __name__ == "__main__":
    main()
