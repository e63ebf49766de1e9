"""One job that changes a server at a time: its backups and updates take turns.

Each server has a Prefect global concurrency limit of 1 named `server-<id>`, made by the first
job that needs it and shown in the UI (Concurrency, Global). A backup or an update holds its one
slot from before it connects until it is done; the slot is leased, so a run that dies frees it
when the lease ends, and renewed while the run lives (Prefect's `concurrency`). Scans take no
slot: they only read, and may run beside a backup.

A job that waits for the slot carries `WAITING_FOR_SERVER_TAG` meanwhile, so that it shows as
`waiting` rather than `active` (deployments/control/states.py): its run stays Running, as a
state of its own would count one more attempt in Prefect's `run_count`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from uuid import UUID

import httpx
from prefect import get_client, get_run_logger
from prefect.client.orchestration import PrefectClient
from prefect.client.schemas.actions import (
    GlobalConcurrencyLimitCreate,
    GlobalConcurrencyLimitUpdate,
)
from prefect.concurrency.asyncio import ConcurrencySlotAcquisitionError
from prefect.concurrency.sync import concurrency
from prefect.context import FlowRunContext
from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

from tasks.core.inventory import Server
from tasks.core.jobs import WAITING_FOR_SERVER_TAG
from tasks.progress import Progress

#: Seconds a slot stays held without a renewal: how long a dead run's slot blocks its server
#: (Prefect's minimum).
LEASE_SECONDS = 60.0
#: The first part of every server limit's name.
PREFIX = "server-"


def slot_name(server: Server) -> str:
    return f"{PREFIX}{server.id}"


async def release_orphaned_slots(client: PrefectClient) -> list[str]:
    """Free every server slot, for a Prefect server that has just started with its leases in
    memory (embedded mode): they died with the last server process, so any slot still counted
    active has no holder that could renew or release it, and would block its server for good.
    Returns the names of the limits it freed.

    Not for a server whose leases outlive it (scaled mode keeps them in Redis), nor one that
    was already running: there, an active slot is a job's.
    """
    freed: list[str] = []
    offset = 0
    while page := await client.read_global_concurrency_limits(limit=200, offset=offset):
        offset += len(page)
        for limit in page:
            if limit.name.startswith(PREFIX) and limit.active_slots > 0:
                await client.update_global_concurrency_limit(
                    limit.name, GlobalConcurrencyLimitUpdate(active_slots=0)
                )
                freed.append(limit.name)
    return freed


def ensure_limit(name: str) -> None:
    """The limit `name` of one slot, made if missing (two jobs may race to make it)."""
    with get_client(sync_client=True) as client:
        try:
            client.read_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            with contextlib.suppress(ObjectAlreadyExists):
                client.create_global_concurrency_limit(
                    GlobalConcurrencyLimitCreate(name=name, limit=1)
                )


@contextlib.contextmanager
def server_slot(server: Server, progress: Progress) -> Iterator[None]:
    """Hold the server's one slot for the body; wait, saying so, while another job has it."""
    name = slot_name(server)
    ensure_limit(name)
    context = FlowRunContext.get()
    run = context.flow_run if context is not None else None
    run_id = run.id if run is not None else None
    # Opened first, so that the slot is given back even if the untagging below is interrupted.
    with contextlib.ExitStack() as held:
        try:
            # A first try, one request: the common case takes the free slot without a word.
            # Not a timeout: one that fires while the server grants the slot loses the lease,
            # and the slot stays taken by nobody until the lease runs out.
            held.enter_context(_hold(name, max_retries=0))
        except ConcurrencySlotAcquisitionError as exc:
            if not _locked(exc):
                raise
            get_run_logger().info("%s: waiting for another job on this server to end", server.name)
            progress.milestone(progress.percent, "waiting for another job on this server")
            # Untagged in the finally: a cancel while waiting must not leave the tag on.
            _tag_waiting(run_id, waiting=True)
            try:
                held.enter_context(_hold(name))
            finally:
                _tag_waiting(run_id, waiting=False)
        else:
            if run is not None and WAITING_FOR_SERVER_TAG in run.tags:
                # Left by an earlier try of this run, killed while it waited.
                _tag_waiting(run_id, waiting=False)
        yield


def _tag_waiting(run_id: UUID | None, *, waiting: bool) -> None:
    """Add or remove the run's waiting-for-server tag; at worst it reads `active` (or
    `waiting`) for a while: a warning, never the end of the job."""
    if run_id is None:  # not a flow run: nothing shows its state
        return
    try:
        with get_client(sync_client=True) as client:
            # Read afresh: the run's tags may have changed since it began.
            tags = [t for t in client.read_flow_run(run_id).tags if t != WAITING_FOR_SERVER_TAG]
            client.update_flow_run(
                run_id, tags=[*tags, WAITING_FOR_SERVER_TAG] if waiting else tags
            )
    except (httpx.HTTPError, OSError, ObjectNotFound) as exc:
        get_run_logger().warning(
            "could not %s the tag %s: %s",
            "add" if waiting else "remove",
            WAITING_FOR_SERVER_TAG,
            exc or type(exc).__name__,
        )


def _locked(exc: ConcurrencySlotAcquisitionError) -> bool:
    """Whether the acquisition failed only because the slot is taken (HTTP 423)."""
    cause = exc.__cause__
    return isinstance(cause, httpx.HTTPStatusError) and cause.response.status_code == 423


def _hold(name: str, max_retries: int | None = None) -> contextlib.AbstractContextManager[None]:
    # A renewal that fails (the Prefect server restarting) must not end the job in the middle
    # of a backup: the lease then runs out, at worst.
    return concurrency(
        name,
        max_retries=max_retries,
        strict=True,
        lease_duration=LEASE_SECONDS,
        raise_on_lease_renewal_failure=False,
    )
