"""The digest flow: one message for every job that failed in a window, `notify/digest`.

Run by a target's failed-jobs automation (deployments/control/notifications.py) when the
window that the window's first failure opened has passed; on the scan pool's `critical` queue,
so that a burst of failing scans does not hold it back. It is no job type: its own failure
is no job's and no automation of ours reacts to it; the UI shows it as a run of `notify`.
"""

from __future__ import annotations

from datetime import datetime
from uuid import UUID

from prefect import flow

from flows.job_variables import refuse_job_variables
from tasks.digest import read_failures, send_digest
from tasks.outcome import RESULT_OPTIONS


@flow(name="notify", flow_run_name="digest since {since}", **RESULT_OPTIONS)
async def digest(
    block: str,
    since: datetime,
    window_seconds: float,
    deployment_ids: list[UUID],
    server_ids: list[UUID] | None = None,
) -> int:
    """Send the failures of `deployment_ids`' runs in [since, since + window] (of `server_ids`
    only, when given) through the notification block named `block`; returns how many."""
    refuse_job_variables()
    failures = await read_failures(since, window_seconds, deployment_ids, server_ids)
    return await send_digest(block, failures, window_seconds)
