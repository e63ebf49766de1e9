"""The update flow: `update:server` jobs on the update pool, one at a time."""

from __future__ import annotations

import time
from typing import Any
from uuid import UUID

from prefect import flow
from prefect.runtime import flow_run

from flows.job_variables import refuse_job_variables
from tasks.core.errors import RemoteCommandFailed
from tasks.core.jobs import JobType, UpdateJob
from tasks.outcome import RESULT_OPTIONS, publish_result
from tasks.progress import Progress
from tasks.server_slot import server_slot
from tasks.servers import find_server, run_name, verify_server
from tasks.ssh import job_connection
from tasks.update import (
    create_update_record,
    fail_update_record,
    refuse_unseen_command,
    run_update,
)


@flow(name="update", flow_run_name=run_name, **RESULT_OPTIONS)
def update(
    server_id: UUID,
    update_id: UUID | None = None,
    user_id: str | None = None,
    job_type: UpdateJob = JobType.UPDATE_SERVER,
) -> dict[str, Any]:
    """Run a server's update command; fails with its exit status and the tail of stderr."""
    refuse_job_variables()
    began = time.monotonic()
    job_id = UUID(flow_run.get_id()) if flow_run.get_id() else None
    update_id = update_id or job_id
    if update_id is None:
        raise ValueError("update_id is required when not running as a flow run")
    progress = Progress.start()
    progress.milestone(10, "started")
    server = find_server(server_id)
    refuse_unseen_command(server, update_id)
    # The server's one slot (no backup or other update of it meanwhile), then one connection
    # for the check and the update command.
    with server_slot(server, progress), job_connection(server) as connection:
        verify_server(server, connection)
        progress.milestone(20, "server verified")
        record = create_update_record(server, update_id, job_id, user_id, job_type)
        progress.milestone(30, "update record created")
        progress.milestone(40, "update running")
        try:
            record = run_update(server, record, connection)
        except RemoteCommandFailed:
            raise  # run_update recorded the exit status and output already
        except BaseException as exc:
            fail_update_record(record, str(exc))
            raise
    progress.milestone(90, "update finished")
    progress.milestone(100, "update record stored")
    return publish_result(
        {
            "updateId": str(update_id),
            "status": "completed",
            "exitStatus": record.exit_status,
            "duration": round(time.monotonic() - began, 3),
        }
    )
