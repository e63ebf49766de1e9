"""The job catalogue: job type -> deployment -> pool. prefect.yaml must agree (a test checks)."""

from __future__ import annotations

from dataclasses import dataclass
from uuid import UUID

from deployments.control.queues import QUEUES_BY_NAME, Priority, Queue
from tasks.core.jobs import JobType


@dataclass(frozen=True)
class Deployment:
    """One Prefect deployment: a flow served by one work pool."""

    flow_name: str
    name: str
    entrypoint: str
    queue: Queue
    #: Work queue its runs go to unless asked otherwise; None: the pool's default priority.
    work_queue: Priority | None = None
    #: Most runs of it at once (its `concurrency_limit`); None: the pool's concurrency.
    limit: int | None = None

    @property
    def module(self) -> str:
        """The module of its flow, e.g. `flows.scan`: what a worker imports to run it."""
        return self.entrypoint.partition(":")[0]

    @property
    def full_name(self) -> str:
        """The `flow/deployment` name that `run_deployment` and the CLI take."""
        return f"{self.flow_name}/{self.name}"

    @property
    def priority(self) -> Priority:
        return self.work_queue or self.queue.default_priority

    @property
    def concurrency_limit(self) -> int:
        return self.queue.concurrency if self.limit is None else self.limit


BACKUP = Deployment("backup", "backup", "flows.backup:backup", QUEUES_BY_NAME["backup"])
SCAN = Deployment("scan", "scan", "flows.scan:scan", QUEUES_BY_NAME["scan"])
UPDATE = Deployment("update", "update", "flows.update:update", QUEUES_BY_NAME["update"])
#: Stored archives re-read against their manifests (flows/check.py): LOW priority in the scan
#: pool, beside maintenance, one run at a time; a job of its own, `check:archives`.
CHECK = Deployment(
    "check",
    "check",
    "flows.check:check",
    QUEUES_BY_NAME["scan"],
    work_queue=Priority.LOW,
    limit=1,
)

#: The deployments of the job types: what the API lists and counts as jobs.
DEPLOYMENTS: tuple[Deployment, ...] = (BACKUP, SCAN, UPDATE, CHECK)

#: Retention of job records and backup archives (flows/maintenance.py): LOW priority in the scan
#: pool, whose five slots leave room for it; one run at a time. Not a job type of the API.
MAINTENANCE = Deployment(
    "maintenance",
    "maintenance",
    "flows.maintenance:maintenance",
    QUEUES_BY_NAME["scan"],
    work_queue=Priority.LOW,
    limit=1,
)

#: The failed-jobs digest (flows/notify.py), run by the notification automations: CRITICAL
#: priority in the scan pool, so that a burst of failing scans does not delay the message about
#: them. Not a job type: its failures are no job's (deployments/control/notifications.py).
NOTIFY = Deployment(
    "notify",
    "digest",
    "flows.notify:digest",
    QUEUES_BY_NAME["scan"],
    work_queue=Priority.CRITICAL,
)

#: Every deployment prefect.yaml declares.
ALL_DEPLOYMENTS: tuple[Deployment, ...] = (*DEPLOYMENTS, MAINTENANCE, NOTIFY)


@dataclass(frozen=True)
class Job:
    """What a job type runs and where."""

    type: JobType
    deployment: Deployment

    @property
    def queue(self) -> Queue:
        return self.deployment.queue

    @property
    def default_priority(self) -> Priority:
        return self.deployment.priority


CATALOGUE: dict[JobType, Job] = {
    JobType.BACKUP_MANUAL: Job(JobType.BACKUP_MANUAL, BACKUP),
    JobType.BACKUP_SCHEDULED: Job(JobType.BACKUP_SCHEDULED, BACKUP),
    JobType.SCAN_FULL: Job(JobType.SCAN_FULL, SCAN),
    JobType.SCAN_QUICK: Job(JobType.SCAN_QUICK, SCAN),
    JobType.UPDATE_SERVER: Job(JobType.UPDATE_SERVER, UPDATE),
    JobType.CHECK_ARCHIVES: Job(JobType.CHECK_ARCHIVES, CHECK),
}

#: Tag on every flow run naming its job type, so runs can be filtered by type in the UI and API.
JOB_TYPE_TAG_PREFIX = "job:"


def job_type_tag(job_type: JobType) -> str:
    return f"{JOB_TYPE_TAG_PREFIX}{job_type.value}"


#: Tag on every flow run the API shim creates, naming the user who asked for it; the shim shows
#: a user only the runs with their tag.
USER_TAG_PREFIX = "user:"


def user_tag(user_id: str) -> str:
    return f"{USER_TAG_PREFIX}{user_id}"


#: Tag on every job's flow run naming its server, so a user's view can be cut to the servers
#: they own (the inventory's `owners`) in the same query as their user tag.
SERVER_TAG_PREFIX = "server:"


def server_tag(server_id: UUID | str) -> str:
    return f"{SERVER_TAG_PREFIX}{server_id}"
