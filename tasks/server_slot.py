"""One job that changes a server at a time: its backups and updates take turns.

Each server has a Prefect global concurrency limit of 1 named `server-<id>`, made by the first
job that needs it and shown in the UI (Concurrency, Global). A backup or an update holds its one
slot from before it connects until it is done; the slot is leased, so a run that dies frees it
when the lease ends, and renewed while the run lives (Prefect's `concurrency`). Scans take no
slot: they only read, and may run beside a backup.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from prefect import get_client, get_run_logger
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
from prefect.concurrency.sync import concurrency
from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

from tasks.core.inventory import Server
from tasks.progress import Progress

#: Seconds a slot stays held without a renewal: how long a dead run's slot blocks its server.
LEASE_SECONDS = 60.0


def slot_name(server: Server) -> str:
    return f"server-{server.id}"


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
    held = contextlib.ExitStack()
    try:
        # A first, quick try: the common case takes the free slot without a word. Entered
        # apart from the body, so that a TimeoutError of the body is never taken for this one.
        held.enter_context(
            concurrency(name, timeout_seconds=0.5, strict=True, lease_duration=LEASE_SECONDS)
        )
    except TimeoutError:
        get_run_logger().info("%s: waiting for another job on this server to end", server.name)
        progress.milestone(progress.percent, "waiting for another job on this server")
        held.enter_context(concurrency(name, strict=True, lease_duration=LEASE_SECONDS))
    with held:
        yield
