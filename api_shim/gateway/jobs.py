"""The control layer's `JobSnapshot` -> the API's `Job`: the facts come from the one reader
(deployments/control/jobs.py), shared with the CLI; this module only gives them the API's shape."""

from __future__ import annotations

from datetime import datetime

from api_shim.schemas import Job, JobData
from deployments.control.jobs import JobSnapshot
from deployments.control.states import JobState
from tasks.core.jobs import JobType, backup_id_of


def epoch_ms(moment: datetime | None) -> int | None:
    return None if moment is None else int(moment.timestamp() * 1000)


def job_data(job: JobSnapshot) -> JobData:
    params = job.parameters

    def text(name: str) -> str | None:
        value = params.get(name)
        return None if value is None else str(value)

    options = params.get("options")
    is_backup = job.name in (JobType.BACKUP_MANUAL, JobType.BACKUP_SCHEDULED)
    return JobData(
        server_id=text("server_id"),
        backup_id=str(backup_id_of(job.id, params.get("backup_id"))) if is_backup else None,
        scan_id=text("scan_id"),
        update_id=text("update_id"),
        user_id=text("user_id"),
        options=options if isinstance(options, dict) else None,
    )


def api_job(job: JobSnapshot) -> Job:
    """The job as the original `GET /api/jobs/:id` showed it."""
    return Job(
        id=str(job.id),
        name=job.name,
        data=job_data(job),
        state=job.state,
        progress=job.percent,
        attempts=job.attempts,
        max_attempts=job.max_attempts,
        timestamp=epoch_ms(job.created) or 0,
        processed_on=epoch_ms(job.started),
        finished_on=epoch_ms(job.ended),
        result=job.result,
        queue=job.pool,
        failed_reason=job.message if job.state is JobState.FAILED else None,
    )
