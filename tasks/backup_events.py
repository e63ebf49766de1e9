"""What a backup tells the notifications: its server's tag on the run, and at the end the
`BACKUP_COMPLETED` event (the dead-man's switch's heartbeat) and, when this backup ends an
incident, `BACKUP_RECOVERED` (the "resolved" message).

Whether it ends one is decided from durable facts in Prefect, not from what an automation
remembers (Prefect's event triggers have no Resolved state of their own): the server's previous
finished backup run ended Failed or Crashed, or it completed longer ago than the schedule
allows (`backup_max_age`).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from uuid import UUID

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    FlowFilter,
    FlowFilterName,
    FlowRunFilter,
    FlowRunFilterId,
    FlowRunFilterState,
    FlowRunFilterStateType,
    FlowRunFilterTags,
)
from prefect.client.schemas.objects import FlowRun, StateType
from prefect.client.schemas.sorting import FlowRunSort
from prefect.events import emit_event
from prefect.utilities.asyncutils import run_coro_as_sync

from tasks.core.freshness import backup_max_age
from tasks.core.inventory import Server
from tasks.core.settings import get_settings
from tasks.notifications import BACKUP_COMPLETED, BACKUP_RECOVERED, server_resource

#: The run tag naming a job's server; the catalogue's `server_tag` (deployments/control) makes
#: the same, which tasks/ may not import.
SERVER_TAG_PREFIX = "server:"
_FINISHED = [StateType.COMPLETED, StateType.FAILED, StateType.CRASHED]


def server_run_tag(server_id: UUID) -> str:
    return f"{SERVER_TAG_PREFIX}{server_id}"


@task(name="tag the run with its server", cache_policy=NO_CACHE)
def tag_with_server(run_id: UUID, server_id: UUID) -> None:
    """Give a scheduled run (a schedule sets no per-server tag) the tag runs enqueued through
    us carry, so a server's backup history and its failures are found by tag."""
    tag = server_run_tag(server_id)
    with get_client(sync_client=True) as client:
        run = client.read_flow_run(run_id)
        if tag not in run.tags:
            client.update_flow_run(run_id, tags=[*run.tags, tag])


def recovery_reason(previous: FlowRun | None, now: datetime, max_age: timedelta | None) -> str:
    """Why this completed backup ends an incident, or "" when there was none."""
    if previous is None or previous.state is None:
        return ""
    if previous.state.type is not StateType.COMPLETED:
        reason = (previous.state.message or previous.state.name or "failed").strip().splitlines()
        return f"its last backup had failed ({reason[0][:200] if reason else 'failed'})"
    ended = previous.end_time
    if max_age is not None and ended is not None and now - ended > max_age:
        return f"its last backup, at {ended:%Y-%m-%d %H:%M} UTC, was older than its schedule allows"
    return ""


@task(name="tell the notifications", cache_policy=NO_CACHE)
def announce_backup(run_id: UUID | None, server: Server) -> str:
    """Emit `BACKUP_COMPLETED`, and `BACKUP_RECOVERED` when it ends an incident; returns the
    reason of the latter ("" when none)."""
    now = datetime.now(UTC)
    reason = ""
    if run_id is not None:
        with get_client(sync_client=True) as client:
            before = client.read_flow_runs(
                flow_filter=FlowFilter(name=FlowFilterName(any_=["backup"])),
                flow_run_filter=FlowRunFilter(
                    id=FlowRunFilterId(not_any_=[run_id]),
                    tags=FlowRunFilterTags(all_=[server_run_tag(server.id)]),
                    state=FlowRunFilterState(type=FlowRunFilterStateType(any_=_FINISHED)),
                ),
                sort=FlowRunSort.END_TIME_DESC,
                limit=1,
            )
        grace = timedelta(seconds=get_settings().notify.stale_grace_seconds)
        max_age = run_coro_as_sync(backup_max_age(server, grace))
        reason = recovery_reason(before[0] if before else None, now, max_age)
    stamp = now.strftime("%Y-%m-%d %H:%M:%S UTC")
    emit_event(BACKUP_COMPLETED, resource=server_resource(server), payload={"last_backup": stamp})
    if reason:
        emit_event(
            BACKUP_RECOVERED,
            resource=server_resource(server),
            payload={"reason": reason, "completed": stamp},
        )
    return reason
