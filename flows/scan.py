"""The scan flow: `scan:full` and `scan:quick` jobs on the scan pool."""

from __future__ import annotations

import time
from typing import Any
from uuid import UUID

from prefect import flow
from prefect.runtime import flow_run

from flows.job_variables import refuse_job_variables
from tasks.core.jobs import JobType, ScanJob
from tasks.outcome import RESULT_OPTIONS, publish_result
from tasks.progress import Progress
from tasks.scan import create_scan_record, fail_scan_record, scan_server, store_scan_results
from tasks.servers import find_server, run_name
from tasks.ssh import job_connection


@flow(name="scan", flow_run_name=run_name, **RESULT_OPTIONS)
def scan(
    server_id: UUID,
    scan_id: UUID | None = None,
    user_id: str | None = None,
    job_type: ScanJob = JobType.SCAN_FULL,
) -> dict[str, Any]:
    """Collect a server's inventory (full) or check that it answers (quick)."""
    refuse_job_variables()
    began = time.monotonic()
    job_id = UUID(flow_run.get_id()) if flow_run.get_id() else None
    scan_id = scan_id or job_id
    if scan_id is None:
        raise ValueError("scan_id is required when not running as a flow run")
    progress = Progress.start()
    progress.milestone(10, "started")
    server = find_server(server_id)
    record = create_scan_record(server, scan_id, job_id, user_id, job_type)
    progress.milestone(20, "scan record created")
    try:
        with job_connection(server) as connection:
            results = scan_server(server, job_type == JobType.SCAN_QUICK, progress, connection)
    except BaseException as exc:
        fail_scan_record(record, str(exc))
        raise
    store_scan_results(record, results)
    progress.milestone(90, "results stored")
    progress.milestone(100, "done")
    return publish_result(
        {
            "scanId": str(scan_id),
            "status": "completed",
            "results": results,
            "duration": round(time.monotonic() - began, 3),
        }
    )
