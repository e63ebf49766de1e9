"""The check flow: `check:archives` jobs, on the `low` queue of the scan pool, one at a time.

Scheduled daily by the bootstrap (MM_CHECK_CRON), started on demand by `medicine-man check` and
`POST /api/backups/check`. Each run re-reads its share of this host's stored archives (all of
them with `all_archives`; one server's with `server_id`) against their manifests; it fails
naming each backup it found corrupt, after publishing what it checked.
"""

from __future__ import annotations

import time
from typing import Any
from uuid import UUID

from prefect import flow, get_run_logger
from prefect.runtime import flow_run

from flows.job_variables import refuse_job_variables
from tasks.archive_checks import announce_corrupt, choose_archives, reread_archives
from tasks.core.errors import ArchiveInvalid
from tasks.core.jobs import CheckJob, JobType
from tasks.outcome import RESULT_OPTIONS, publish_result
from tasks.progress import Progress


@flow(name="check", flow_run_name="{job_type}", **RESULT_OPTIONS)
def check(
    all_archives: bool = False,
    server_id: UUID | None = None,
    user_id: str | None = None,
    job_type: CheckJob = JobType.CHECK_ARCHIVES,
) -> dict[str, Any]:
    """Re-read this run's share of the archives; a mismatch marks the backup `corrupt`."""
    refuse_job_variables()
    began = time.monotonic()
    if user_id:
        get_run_logger().info("asked for by %s", user_id)
    progress = Progress.start()
    progress.milestone(10, "started")
    share = choose_archives(server_id, all_archives)
    progress.milestone(20, "archives chosen")
    report = reread_archives(share, progress)
    progress.milestone(90, "archives re-read")
    result = publish_result(
        {
            "all": all_archives,
            "serverId": str(server_id) if server_id else None,
            "archives": share.candidates,
            "checked": len(report.matched) + len(report.corrupt),
            "matched": len(report.matched),
            "corrupt": [finding.entry() for finding in report.corrupt],
            "unreadable": [finding.entry() for finding in report.unreadable],
            "skipped": len(report.skipped),
            "bytesRead": report.bytes_read,
            "duration": round(time.monotonic() - began, 3),
        }
    )
    if report.corrupt or report.unreadable:
        # One message for the lot (deployments/control/notifications.py), then the failure.
        announce_corrupt(report, UUID(flow_run.get_id()) if flow_run.get_id() else None)
        raise ArchiveInvalid(report.summary())
    progress.milestone(100, "done")
    return result
