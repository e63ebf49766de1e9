"""The backup flow: `backup:manual` and `backup:scheduled` jobs on the backup pool."""

from __future__ import annotations

import time
from typing import Any
from uuid import UUID

from prefect import flow, get_run_logger
from prefect.runtime import flow_run

from flows.job_variables import refuse_job_variables
from tasks.backup import (
    clear_post_pending,
    complete_backup_record,
    create_backup_record,
    fail_backup_record,
    plan_backup,
    post_left_pending,
    run_hook,
    set_post_pending,
    transfer_archive,
)
from tasks.backup_events import announce_backup, tag_with_server
from tasks.core.inventory import BackupSpec, Server
from tasks.core.jobs import BackupJob, BackupOptions, JobType, backup_id_of
from tasks.outcome import RESULT_OPTIONS, publish_result
from tasks.pings import Pings
from tasks.progress import Progress
from tasks.remote import Connection
from tasks.repository import BackupStatus, Manifest
from tasks.server_slot import server_slot
from tasks.servers import find_server, run_name
from tasks.ssh import job_connection


@flow(name="backup", flow_run_name=run_name, **RESULT_OPTIONS)
def backup(
    server_id: UUID,
    backup_id: UUID | None = None,
    user_id: str | None = None,
    job_type: BackupJob = JobType.BACKUP_MANUAL,
    options: BackupOptions | None = None,
) -> dict[str, Any]:
    """Back up a server's paths into the repository; one archive per backup id, ever."""
    refuse_job_variables()
    began = time.monotonic()
    options = options or BackupOptions()
    job_id = UUID(flow_run.get_id()) if flow_run.get_id() else None
    if job_id is not None:
        backup_id = backup_id_of(job_id, backup_id)
    if backup_id is None:
        raise ValueError("backup_id is required when not running as a flow run")
    if job_id is not None:
        # A scheduled run has no server tag; its history and failures are found by it.
        tag_with_server(job_id, server_id)
    progress = Progress.start()
    progress.milestone(10, "started")
    server = find_server(server_id)
    pings = Pings(server.backup.ping_url if server.backup else None, get_run_logger(), job_id)
    pings.start()
    try:
        manifest = _back_up(server, backup_id, job_id, user_id, job_type, options, progress)
    except Exception as exc:
        # Once per run of the flow: its tasks' retries are over by now (tasks/retry.py), and
        # the flow itself is not retried; a run killed outright sends nothing, and the
        # service's own timer after `start` tells of it (docs/DESIGN.md, "Backup pings").
        pings.failure(str(exc) or type(exc).__name__)
        raise
    # The dead-man's switch's heartbeat, and "resolved" when this ends an incident.
    announce_backup(job_id, server)
    pings.success(f"backup {manifest.backup_id} completed: {manifest.size} bytes")
    progress.milestone(100, "backup record updated")
    return publish_result(
        {
            "backupId": str(manifest.backup_id),
            "status": manifest.status.value,
            "size": manifest.size,
            "fileCount": manifest.file_count,
            "sha256": manifest.sha256,
            "duration": round(time.monotonic() - began, 3),
        }
    )


def _back_up(
    server: Server,
    backup_id: UUID,
    job_id: UUID | None,
    user_id: str | None,
    job_type: BackupJob,
    options: BackupOptions,
    progress: Progress,
) -> Manifest:
    """The backup itself: the server's slot, the plan, the hooks, the archive and its record."""
    # The server's one slot (no update or other backup of it meanwhile), then one connection
    # for the plan and the hooks (and the transfer, through paramiko).
    with server_slot(server, progress), job_connection(server) as connection:
        plan = plan_backup(server, options, connection)
        progress.milestone(20, "server verified")
        assert server.backup is not None
        if post_left_pending(server, backup_id):
            # An earlier try ran pre and died before post: put the server back first.
            post_error = _run_post(server, server.backup, connection)
            if post_error is not None:
                raise post_error
            clear_post_pending(server, backup_id)
        manifest = create_backup_record(server, backup_id, job_id, user_id, job_type, plan)
        progress.milestone(30, "backup record created")
        if manifest.status is not BackupStatus.COMPLETED:
            assert server.backup is not None
            spec = server.backup
            try:
                if spec.pre:
                    manifest = set_post_pending(manifest, bool(spec.post))
                    run_hook(server, "pre", spec.pre, connection)
                manifest = transfer_archive(server, manifest, plan, progress, connection)
            except BaseException as exc:
                # The manifest is the operator's: the whole story, command text included.
                fail_backup_record(manifest, getattr(exc, "detail", None) or str(exc))
                _run_post(server, spec, connection)
                clear_post_pending(server, backup_id)
                raise
            # Restart what pre stopped before the (slower) verification.
            post_error = _run_post(server, spec, connection)
            manifest = complete_backup_record(manifest.model_copy(update={"post_pending": False}))
            if post_error is not None:
                raise post_error
    return manifest


def _run_post(server: Server, spec: BackupSpec, connection: Connection) -> Exception | None:
    """Run the post command whatever happened before; its failure is returned, not raised."""
    if not spec.post:
        return None
    try:
        run_hook(server, "post", spec.post, connection)
    except Exception as exc:
        return exc
    return None
