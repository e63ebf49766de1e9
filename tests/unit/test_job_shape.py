"""The API's shape of a job (api_shim/gateway/jobs.py) for the cases the reader leaves to it."""

from __future__ import annotations

from uuid import uuid4

from api_shim.gateway.jobs import job_data
from deployments.control.jobs import JobSnapshot
from deployments.control.states import JobState


def _snapshot(name: str, parameters: dict[str, object]) -> JobSnapshot:
    return JobSnapshot(
        id=uuid4(),
        name=name,
        parameters=parameters,
        state=JobState.WAITING,
        state_name="Scheduled",
        message=None,
        percent=0,
        step=None,
        attempts=0,
        result=None,
        pool="backup",
        created=None,
        started=None,
        ended=None,
    )


def test_a_scheduled_backup_shows_its_job_id_as_its_backup_id() -> None:
    # No caller gave it one: the flow backs up under its job id (tasks/core/jobs.py).
    job = _snapshot("backup:scheduled", {"server_id": str(uuid4()), "backup_id": None})
    assert job_data(job).backup_id == str(job.id)


def test_a_manual_backup_keeps_the_backup_id_it_was_given() -> None:
    given = str(uuid4())
    assert job_data(_snapshot("backup:manual", {"backup_id": given})).backup_id == given


def test_other_jobs_have_no_backup_id() -> None:
    assert job_data(_snapshot("scan:quick", {"scan_id": str(uuid4())})).backup_id is None
