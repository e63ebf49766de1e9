"""Creating a job so that each request ends with one job that exists, or with none that will run.

Every create carries an idempotency key: the caller's (scoped by user and endpoint) or one made
up for the request. A create that Prefect refused (an error answer, nothing listening) created
nothing, and the caller gets a 503 with Retry-After. When Prefect took the request and did not
answer (a timeout, a broken connection), the run may exist; the gateway looks it up by its key:

- found: the job exists, and the request is answered as if Prefect had answered in time;
- not found, or Prefect cannot be asked: 503 with Retry-After. A caller who sent an
  Idempotency-Key repeats the request with it and gets the one job, whichever request created
  it. For a request without one, a `Reaper` keeps looking for the run for `REAP_SECONDS` and
  cancels it if it shows up late, so that no 503 leaves behind a job nobody was told about.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

from prefect.client.orchestration import PrefectClient
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterIdempotencyKey
from prefect.client.schemas.objects import FlowRun, State
from prefect.states import Cancelled, Cancelling

from deployments.control.states import STARTED

log = logging.getLogger("api_shim")

#: Seconds the reaper looks for a run whose create was answered 503, and between two looks.
REAP_SECONDS = 180.0
REAP_POLL = 3.0
#: Seconds the gateway spends at most looking up a run whose create had no answer.
SETTLE_SECONDS = 5.0


async def find_by_key(client: PrefectClient, key: str) -> FlowRun | None:
    """The flow run created with idempotency key `key`, if there is one."""
    runs = await client.read_flow_runs(
        flow_run_filter=FlowRunFilter(idempotency_key=FlowRunFilterIdempotencyKey(any_=[key])),
        limit=1,
    )
    return runs[0] if runs else None


class Reaper:
    """Cancels the runs of creates that were answered 503 but went through later."""

    def __init__(self, client: PrefectClient, clock: Callable[[], float] | None = None) -> None:
        self.client = client
        self._clock = clock or asyncio.get_running_loop().time
        self._tasks: set[asyncio.Task[None]] = set()

    def watch(self, key: str, refused_at: datetime) -> None:
        """Look for the run of `key` for a while; cancel it if it turns up."""
        task = asyncio.create_task(self._reap(key, refused_at), name=f"reap {key}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    @property
    def watching(self) -> int:
        return len(self._tasks)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _reap(self, key: str, refused_at: datetime) -> None:
        deadline = self._clock() + REAP_SECONDS
        while self._clock() < deadline:
            try:
                async with asyncio.timeout(REAP_POLL * 3):
                    run = await find_by_key(self.client, key)
                    if run is not None:
                        await self._cancel(run, refused_at)
                        return
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # Prefect still down or slow: look again.
                log.debug("reaper: looking for %s: %s", key, exc)
            await asyncio.sleep(REAP_POLL)
        log.info("reaper: no run of %s appeared within %.0f s", key, REAP_SECONDS)

    async def _cancel(self, run: FlowRun, refused_at: datetime) -> None:
        if run.state is not None and run.state.is_final():
            return
        message = (
            f"not run: its enqueue request was answered 503 at {refused_at:%Y-%m-%d %H:%M:%S} "
            "UTC because Prefect did not confirm it in time"
        )
        started = run.state is not None and run.state.type in STARTED
        state: State[None] = Cancelling(message=message) if started else Cancelled(message=message)
        await self.client.set_flow_run_state(run.id, state, force=True)
        log.warning("reaper: cancelled flow run %s (%s)", run.id, message)


async def settle(
    lookup: Callable[[], Awaitable[FlowRun | None]],
    reaper: Reaper,
    key: str,
    problem: str,
    *,
    callers_key: bool,
    ask: bool = True,
) -> FlowRun | str:
    """After a create without an answer: the run if it exists, else the 503 message to send.

    `ask`: whether to look the run up at all (not when nothing accepts connections).
    """
    if ask:
        try:
            async with asyncio.timeout(SETTLE_SECONDS):
                run = await lookup()
        except Exception:
            run = None
        if run is not None:
            return run
    if callers_key:
        return (
            f"{problem}; the job may have been created: repeat the request with the same "
            "Idempotency-Key to get it (once), or to create it"
        )
    reaper.watch(key, datetime.now(UTC))
    return f"{problem}; the job was not created, try again later"
