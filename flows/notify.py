"""The digest flow: one message for every job that failed in a window, `notify/digest`.

Run by a target's failed-jobs automation (deployments/control/notifications.py) when the
window that the window's first failure opened has passed; on the scan pool's `critical` queue,
so that a burst of failing scans does not hold it back. It is no job type: its own failure
is no job's and no automation of ours reacts to it; the UI shows it as a run of `notify`.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from uuid import UUID

from prefect import flow
from prefect.runtime import flow_run

from flows.job_variables import refuse_job_variables
from tasks.digest import read_failures, send_digest
from tasks.outcome import RESULT_OPTIONS

#: How late Prefect's proactive pass may fire a window that has ended.
FIRING_SLACK = timedelta(seconds=15)


def window_start(since: str, created: datetime, window_seconds: float) -> datetime:
    """The window's start: the automation's `{{ event.occurred }}`, which Prefect 3.9 renders
    empty for some proactive firings (the bucket's first event not at hand), else counted back
    from when the automation created this run, at the window's end."""
    if since.strip():
        return datetime.fromisoformat(since.strip())
    return created - timedelta(seconds=window_seconds) - FIRING_SLACK


@flow(name="notify", flow_run_name="digest", **RESULT_OPTIONS)
async def digest(
    block: str,
    since: str,
    window_seconds: float,
    deployment_ids: list[UUID],
    server_ids: list[UUID] | None = None,
) -> int:
    """Send the failures of `deployment_ids`' runs in [since, since + window] (of `server_ids`
    only, when given) through the notification block named `block`; returns how many."""
    refuse_job_variables()
    created = flow_run.scheduled_start_time or datetime.now(UTC)
    start = window_start(since, created, window_seconds)
    failures = await read_failures(start, window_seconds, deployment_ids, server_ids)
    return await send_digest(block, failures, window_seconds)
