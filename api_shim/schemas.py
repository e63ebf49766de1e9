"""What the API answers: camelCase JSON in the original `{success, message, data}` envelope."""

from __future__ import annotations

from datetime import datetime, timedelta
from enum import StrEnum
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Generic, Literal, TypeVar
from uuid import UUID

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    GetJsonSchemaHandler,
    StrictBool,
    WithJsonSchema,
    create_model,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema

from deployments.control.queues import QUEUES, Priority
from deployments.control.states import JobState
from tasks.archive_listing import Member
from tasks.core.due import MAX_DELAY, MAX_EPOCH_MS, due_time, run_at_from_json
from tasks.core.jobs import BackupOptions
from tasks.repository import Manifest

T = TypeVar("T")


class Schema(BaseModel):
    """Snake_case in Python, camelCase on the wire, like the original Node API."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True)


class Envelope(BaseModel, Generic[T]):
    """Every answer, errors included."""

    success: bool = True
    message: str
    data: T


class ErrorDetail(Schema):
    """One invalid input: where it is and what is wrong."""

    field: str
    message: str


class ErrorData(Schema):
    errors: list[ErrorDetail] = Field(default_factory=list)


class ErrorEnvelope(BaseModel):
    """An error answer: `success` false and a message that says what to do."""

    success: Literal[False] = False
    message: str
    data: ErrorData | None = None


# -- requests -------------------------------------------------------------------------------

# Literals built from the queue table, so the OpenAPI schema lists its names as an `enum`; mypy
# cannot follow a Literal built at run time, so it checks them as plain strings.
if TYPE_CHECKING:
    PriorityName = str
    QueueName = str
else:
    #: A work queue's name: critical, high, normal or low.
    PriorityName = Literal[tuple(p.queue_name for p in Priority)]
    #: A pool's name: backup, scan or update.
    QueueName = Literal[tuple(queue.name for queue in QUEUES)]


def _a_json_number(value: object) -> object:
    """Pydantic reads "5" and true as the integer 5 and 1; JSON Schema's integer is neither."""
    if isinstance(value, str | bool):
        raise ValueError("expected a number")
    return value


#: A work queue by name or by its number (1 = critical ... 4 = low), as BullMQ priorities were.
PriorityValue = (
    PriorityName
    | Annotated[int, Field(ge=min(Priority), le=max(Priority)), BeforeValidator(_a_json_number)]
)


#: `runAt` as the API takes it: epoch milliseconds or ISO 8601 (tasks/core/due.py).
RunAt = Annotated[
    datetime,
    BeforeValidator(run_at_from_json),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "integer", "minimum": 0, "maximum": MAX_EPOCH_MS},
                {"type": "string", "format": "date-time"},
            ],
            "description": "Epoch milliseconds or ISO 8601; a time past means now.",
        }
    ),
]


#: JSON Schema rules between a request's fields (`FieldRules`).
Rules = tuple[dict[str, Any], ...]


def _given(field: str) -> dict[str, Any]:
    """JSON Schema: `field` is there and not null."""
    return {"required": [field], "properties": {field: {"not": {"type": "null"}}}}


class FieldRules(BaseModel):
    """A request whose fields depend on each other ("this or that, not both"): its validators
    say so to the caller, and `field_rules` (JSON Schema, collected over the class's bases)
    say it in the OpenAPI document, so that what the document calls valid is accepted."""

    field_rules: ClassVar[Rules] = ()

    @classmethod
    def __get_pydantic_json_schema__(
        cls, core_schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        schema = handler(core_schema)
        rules = [rule for klass in cls.__mro__ for rule in vars(klass).get("field_rules", ())]
        if rules:
            handler.resolve_ref_schema(schema)["allOf"] = rules
        return schema


class Timing(FieldRules):
    """When a job may start (new): now, unless `delay` or `runAt` says later; such a job is
    `delayed` until then, and can be cancelled before."""

    model_config = ConfigDict(extra="forbid")

    delay: int | None = Field(
        None,
        ge=0,
        le=MAX_DELAY // timedelta(milliseconds=1),
        description="Milliseconds to wait before the job may start (at most a year).",
    )
    run_at: RunAt | None = Field(None, alias="runAt")

    field_rules: ClassVar[Rules] = ({"not": {"allOf": [_given("delay"), _given("runAt")]}},)

    _delay_is_a_number = field_validator("delay", mode="before")(_a_json_number)

    @model_validator(mode="after")
    def _one_due_time(self) -> Timing:
        self.due()  # refuses both at once, and a delay of more than a year
        return self

    def due(self) -> datetime | None:
        """When the job is due; None for now."""
        delay = timedelta(milliseconds=self.delay) if self.delay is not None else None
        return due_time(delay, self.run_at)


class BackupRequest(BackupOptions, Timing):
    """A backup request: the original options plus an optional priority and due time."""

    priority: PriorityValue | None = None

    def options(self) -> BackupOptions:
        """The job's options: what the flow gets, without the when and the priority."""
        fields = set(BackupOptions.model_fields)
        return BackupOptions.model_validate(self.model_dump(include=fields))


class ScanRequest(Timing):
    scan_type: Literal["full", "quick"] = "full"
    priority: PriorityValue | None = None


class UpdateRequest(Timing):
    priority: PriorityValue | None = None


#: Servers one bulk enqueue takes at most.
MAX_BULK_SERVERS = 1000


_ALL = {"required": ["all"], "properties": {"all": {"const": True}}}


class ServerChoice(FieldRules):
    """The servers of a bulk enqueue: `serverIds`, or `all` the caller may use."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    server_ids: list[UUID] | None = Field(
        None, alias="serverIds", min_length=1, max_length=MAX_BULK_SERVERS
    )
    all: StrictBool = Field(
        False, description="Every server the caller may use (that has a backup)."
    )

    field_rules: ClassVar[Rules] = (
        {"anyOf": [_given("serverIds"), _ALL]},
        {"not": {"allOf": [_given("serverIds"), _ALL]}},
    )

    @model_validator(mode="after")
    def _one_choice(self) -> ServerChoice:
        if (self.server_ids is None) == (not self.all):
            raise ValueError("give serverIds or all: true, one of them")
        return self


class BulkScanRequest(ScanRequest, ServerChoice):
    """A scan of each of several servers."""


class BulkBackupRequest(BackupRequest, ServerChoice):
    """A backup of each of several servers, same options for all."""


class PauseRequest(BaseModel):
    """Which queue to pause or resume; all of them when absent."""

    model_config = ConfigDict(extra="forbid")

    queue: QueueName | None = None


class CheckRequest(BaseModel):
    """Which archives a check re-reads: its share (the default), or all of them; of every
    server, or of one."""

    model_config = ConfigDict(extra="forbid")

    all: StrictBool = False
    server_id: UUID | None = None


class CleanRequest(BaseModel):
    """Which finished jobs to delete."""

    model_config = ConfigDict(extra="forbid")

    #: Completed and failed jobs that ended longer ago than this are deleted.
    older_than_seconds: int = Field(7 * 24 * 3600, ge=0, le=10 * 365 * 24 * 3600)
    #: Completed jobs beyond the newest this many of each queue are deleted too.
    keep_completed: int = Field(1000, ge=0, le=1_000_000)

    _numbers = field_validator("older_than_seconds", "keep_completed", mode="before")(
        _a_json_number
    )


# -- servers --------------------------------------------------------------------------------

#: What can be asked of a server: the `POST /api/servers/:id/<action>` endpoints.
ServerAction = Literal["backup", "scan", "update"]


class ServerAccess(Schema):
    """How the workers reach a server and who may use it; for admins only."""

    host: str
    port: int
    username: str
    owners: list[str]


class ServerInfo(Schema):
    """A server the caller may run jobs on. Never key material, paths or command text."""

    id: str
    name: str
    #: What it can run: `backup` with backup paths, `scan` always, `update` with a command.
    actions: list[ServerAction]
    #: Null for users.
    access: ServerAccess | None = None


# -- jobs -----------------------------------------------------------------------------------


class JobData(Schema):
    """What the job was asked to do (the flow run's parameters)."""

    server_id: str | None = None
    backup_id: str | None = None
    scan_id: str | None = None
    update_id: str | None = None
    user_id: str | None = None
    options: dict[str, Any] | None = None


class Job(Schema):
    """A job as the original `GET /api/jobs/:id` showed it; times are epoch milliseconds."""

    id: str
    #: The job type, e.g. `backup:manual`.
    name: str
    data: JobData
    state: JobState
    progress: float = Field(ge=0, le=100)
    attempts: int = Field(ge=0)
    max_attempts: int
    timestamp: int
    processed_on: int | None = None
    finished_on: int | None = None
    result: dict[str, Any] | None = None
    #: The work pool: backup, scan or update.
    queue: str | None = None
    failed_reason: str | None = None


class JobList(Schema):
    jobs: list[Job]
    #: Jobs on this page.
    count: int
    #: All jobs that match the filter.
    total: int
    limit: int
    offset: int


class JobAccepted(Schema):
    """The answer to a backup, scan or update request, sent before the job runs.

    Not `Enqueued`: that is what the control layer returns (deployments/control/jobs.py).
    """

    job_id: str
    server_id: str
    #: `delayed` for a job asked for later (`delay`, `runAt`).
    status: Literal["pending", "delayed"] = "pending"
    message: str


class BackupEnqueued(JobAccepted):
    backup_id: str


class ScanEnqueued(JobAccepted):
    scan_id: str


class UpdateEnqueued(JobAccepted):
    update_id: str


class BulkEnqueueResult(Schema):
    """What one server of a bulk enqueue came to: its job, or why it has none."""

    server_id: str
    success: bool
    message: str
    job: BackupEnqueued | ScanEnqueued | None = None


class BulkEnqueued(Schema):
    results: list[BulkEnqueueResult]
    count: int
    #: Jobs created (or, for a repeated Idempotency-Key, found).
    enqueued: int


class CheckEnqueued(Schema):
    """The answer to a check request, sent before the job runs."""

    job_id: str
    status: Literal["pending"] = "pending"
    message: str


class JobRef(Schema):
    job_id: str


class Cancelled(Schema):
    job_id: str
    state: JobState


#: Jobs one bulk request acts on at most; for more, repeat it (`total` says how many matched).
MAX_BULK = 200


_FILTERS = (_given("queue"), _given("state"), _given("serverId"))


class BulkJobsRequest(FieldRules):
    """The jobs a bulk retry or cancel acts on: by id, or by the list's filters (the caller's
    jobs only, as in `GET /api/jobs`)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    ids: list[UUID] | None = Field(None, min_length=1, max_length=MAX_BULK)
    queue: QueueName | None = None
    state: JobState | None = None
    server_id: UUID | None = Field(None, alias="serverId")

    field_rules: ClassVar[Rules] = (
        {"anyOf": [_given("ids"), *_FILTERS]},
        {"not": {"allOf": [_given("ids"), {"anyOf": list(_FILTERS)}]}},
    )

    @model_validator(mode="after")
    def _ids_or_filters(self) -> BulkJobsRequest:
        filters = (self.queue, self.state, self.server_id)
        if self.ids is not None and any(f is not None for f in filters):
            raise ValueError("give ids or filters (queue, state, serverId), not both")
        if self.ids is None and all(f is None for f in filters):
            raise ValueError("give ids, or at least one filter: queue, state or serverId")
        return self


class BulkJobResult(Schema):
    """What one job of a bulk request came to."""

    job_id: str
    success: bool
    #: Its state now, when it was found.
    state: JobState | None = None
    message: str


class BulkJobResults(Schema):
    results: list[BulkJobResult]
    #: Jobs acted on (this answer's).
    count: int
    succeeded: int
    #: Jobs that matched the filters; more than `count` when there were over 200: repeat.
    total: int


class LogEntry(Schema):
    """One line of a job's log (Prefect's flow-run logs)."""

    #: Epoch milliseconds, like the job's times.
    timestamp: int
    level: str
    message: str
    #: The step (task run) that logged it; null for the job's own lines.
    task_run_id: str | None


class JobLogs(Schema):
    job_id: str
    logs: list[LogEntry]
    #: Lines on this page.
    count: int
    limit: int
    offset: int


class CleanResult(Schema):
    """How many jobs a clean deleted, by queue."""

    deleted: int
    by_queue: dict[str, int]


class QueuePaused(Schema):
    queue: str
    paused: bool


# -- backups --------------------------------------------------------------------------------


class BackupList(Schema):
    """Backups as their manifests say (tasks/repository.py: `Manifest`), newest first."""

    #: For a user, `error` is null: it may quote a hook's command (their job says what failed).
    backups: list[Manifest]
    #: Backups on this page.
    count: int
    #: All backups that match.
    total: int
    limit: int
    offset: int


class BackupFiles(Schema):
    """Members of a backup's archive at or under `path`, in archive order."""

    backup_id: str
    #: As asked; empty for the whole archive.
    path: str
    files: list[Member]
    count: int
    total: int
    limit: int
    offset: int


# -- metrics --------------------------------------------------------------------------------


class QueueCounts(Schema):
    """Jobs of one queue by state; `total` is all of them."""

    waiting: int = 0
    active: int = 0
    completed: int = 0
    failed: int = 0
    delayed: int = 0
    paused: int = 0
    cancelled: int = 0
    total: int = 0


class HealthStatus(StrEnum):
    HEALTHY = "healthy"
    DEGRADED = "degraded"
    UNHEALTHY = "unhealthy"


class Health(Schema):
    status: HealthStatus
    message: str


#: `{backup: QueueCounts, scan: ..., update: ..., health: Health}`, from the queue table.
QueueMetrics: type[Schema] = create_model(  # type: ignore[call-overload]
    "QueueMetrics",
    __base__=Schema,
    health=(Health, ...),
    **{queue.name: (QueueCounts, ...) for queue in QUEUES},
)

#: `{backup: QueueCounts, scan: ..., update: ...}`.
QueueStats: type[Schema] = create_model(  # type: ignore[call-overload]
    "QueueStats",
    __base__=Schema,
    **{queue.name: (QueueCounts, ...) for queue in QUEUES},
)


class PrefectStatus(Schema):
    reachable: bool
    api_url: str
    version: str | None = None
    message: str


class ServiceHealth(Schema):
    """Readiness: `ok` once Prefect answers and has all that jobs need.

    Only what is missing, nothing else: /health needs no token, so it names neither Prefect's
    address nor its version (the shim's log has the reason of an `unavailable`).
    """

    #: ok: an enqueue would be accepted; unavailable: Prefect does not answer; not_ready: it
    #: answers but lacks some of `missing` (the bootstrap has not run, or they were deleted).
    status: Literal["ok", "unavailable", "not_ready"]
    #: What Prefect lacks, e.g. `deployment backup/backup`, `work queue scan/low`; `Prefect API`
    #: when it does not answer.
    missing: list[str] = Field(default_factory=list)


class Liveness(Schema):
    """The shim's process answers; says nothing of Prefect, nor of the process itself."""

    status: Literal["alive"] = "alive"


class WorkerCount(Schema):
    queue: str
    online: int
    paused: bool


class SystemMetrics(Schema):
    status: HealthStatus
    uptime_seconds: float
    prefect: PrefectStatus
    workers: list[WorkerCount]
    queues: dict[str, QueueCounts]
    health: Health


class JobEvent(Schema):
    """One Server-Sent Event: the job's state and progress when either changed."""

    job_id: str
    state: JobState
    progress: float
    message: str | None = None
    final: bool
