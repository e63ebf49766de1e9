"""The maintenance flow: retention of job records and of backup archives, on the `low` queue.

Scheduled daily by the bootstrap (MM_MAINTENANCE_CRON) and started on demand by
`medicine-man clean`. `POST /api/jobs/clean` runs the job-record half directly instead.
"""

from __future__ import annotations

import time
from typing import Any

from prefect import flow, get_run_logger

from flows.job_variables import refuse_job_variables
from tasks.maintenance import clean_old_job_records, prune_backup_archives
from tasks.outcome import RESULT_OPTIONS, publish_result
from tasks.progress import Progress


@flow(name="maintenance", flow_run_name="maintenance", **RESULT_OPTIONS)
def maintenance(dry_run: bool = False, user_id: str | None = None) -> dict[str, Any]:
    """Delete old job records, then prune each server's backup archives; a dry run only counts."""
    refuse_job_variables()
    began = time.monotonic()
    if user_id:
        get_run_logger().info("asked for by %s%s", user_id, " (dry run)" if dry_run else "")
    progress = Progress.start()
    progress.milestone(10, "started")
    deleted = clean_old_job_records(dry_run)
    progress.milestone(40, "job records cleaned")
    servers = prune_backup_archives(dry_run)
    progress.milestone(90, "backup archives pruned")
    progress.milestone(100, "done")
    return publish_result(
        {
            "dryRun": dry_run,
            "jobRecordsDeleted": sum(deleted.values()),
            "jobRecordsByQueue": deleted,
            "archivesRemoved": sum(len(s.removed) for s in servers),
            "archivesKept": sum(s.kept for s in servers),
            "bytesFreed": sum(s.bytes_freed for s in servers),
            "servers": len(servers),
            "duration": round(time.monotonic() - began, 3),
        }
    )
