"""Every MM_* setting, in one place: `Settings`, one section per concern, read once per process.

Each section is a `BaseSettings` of its own whose variable is its `env_prefix` plus the field's
name, upper-cased: `Settings().ssh.idle_timeout` is MM_SSH_IDLE_TIMEOUT, `Settings().keep.last`
MM_KEEP_LAST, `Settings().paths.backup_root` MM_BACKUP_ROOT. The names are the ones users have
set for years, hence prefixes that differ by section rather than one nested delimiter.

A process reads them once (`get_settings`, which names the variable of each bad value) and
passes the section a function needs down to it. Checks that need more than the value stay
with the code that has the rest: the queue table's lock durations
(deployments/control/automations.py, `check_supervision`) and Prefect's cron syntax
(deployments/control/maintenance.py, `check_maintenance`, and deployments/control/checks.py,
`check_checks`); tasks/core imports nothing else of ours. README's configuration table lists
every variable here, with its default (tests/unit/test_configuration_table.py).
"""

from __future__ import annotations

import re
import secrets
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    Field,
    PrivateAttr,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict
from pydantic_settings import SettingsError as SourceError

from tasks.core.recipients import AgeRecipient

#: Prefect's floor for flow-run heartbeats (`prefect.flow_engine.MINIMUM_HEARTBEAT_INTERVAL`).
MIN_HEARTBEAT_SECONDS = 30
#: Bytes an HS256 key needs at least: the hash's output size (RFC 7518, section 3.2).
MIN_SECRET_BYTES = 32


def _section(prefix: str) -> SettingsConfigDict:
    # extra="ignore": the environment holds every section's variables, and other programs'.
    return SettingsConfigDict(env_prefix=prefix, extra="ignore")


class PathSettings(BaseSettings):
    """Where the inventory, the backup repositories and the results are (every process)."""

    model_config = _section("MM_")

    inventory: Path = Field(Path("inventory.yaml"), description="Server inventory (YAML).")
    backup_root: Path = Field(Path("var/backups"), description="The backup repository.")
    backup_roots: str = Field(
        "",
        description="More backup repositories to search for a backup (one per worker host when"
        " each keeps its own), separated by ':'; `backup_root` is searched first.",
    )
    results_root: Path = Field(Path("var/results"), description="Scan results and update logs.")

    def search_roots(self) -> list[Path]:
        """`backup_root`, then each of `backup_roots`, without repeats."""
        roots = [self.backup_root, *(Path(p) for p in self.backup_roots.split(":") if p)]
        return list(dict.fromkeys(roots))


class SSHSettings(BaseSettings):
    """How patient SSH is, and which client downloads archives (the work processes)."""

    model_config = _section("MM_SSH_")

    connect_timeout: float = Field(10.0, gt=0, description="Seconds to connect and log in.")
    idle_timeout: float = Field(
        120.0, gt=0, description="Seconds without a byte from the server before it counts as hung."
    )
    client: Literal["auto", "paramiko"] = Field(
        "auto",
        description="How archives are downloaded: `auto` uses the system OpenSSH client when it"
        " can keep paramiko's checks (tasks/openssh.py), else paramiko; `paramiko` always.",
    )


class EncryptionSettings(BaseSettings):
    """Encrypted backups (age format): the public keys workers encrypt to, and the private key
    only the CLI's `verify` and `restore` read. deployments/system/stack.py never passes
    MM_BACKUP_IDENTITY to a child: a worker writes backups without any private key."""

    model_config = _section("MM_BACKUP_")

    recipients: Annotated[list[AgeRecipient], NoDecode] = Field(
        default_factory=list,
        description="age public keys (`age1...`) an encrypted backup is readable by, separated"
        " by commas or spaces; a server's `backup.recipients` replaces them.",
    )
    identity: Path | None = Field(
        None, description="age identity file (private key) of `verify` and `restore`, CLI only."
    )

    @field_validator("recipients", mode="before")
    @classmethod
    def _split(cls, value: Any) -> Any:
        # A list of keys is one line of text in the environment, not JSON.
        if isinstance(value, str):
            return value.replace(",", " ").split()
        return value


class InsecureSettings(RuntimeError):
    """MM_JWT_SECRET is not set; set it (or MM_API_DEV=1 for a throwaway one in development)."""

    def __init__(self) -> None:
        super().__init__((self.__doc__ or "").strip())


class WeakSecret(RuntimeError):
    """MM_JWT_SECRET is too short to sign tokens safely."""

    def __init__(self, length: int) -> None:
        super().__init__(
            f"MM_JWT_SECRET is {length} bytes long; HS256 needs at least {MIN_SECRET_BYTES} "
            "(e.g. `openssl rand -base64 48`)"
        )


class ApiSettings(BaseSettings):
    """How the shim authenticates callers and talks to Prefect."""

    model_config = _section("MM_")

    jwt_secret: SecretStr | None = Field(None, description="HS256 key of the callers' tokens.")
    api_dev: bool = Field(False, description="Development mode: a generated secret if none.")
    #: When set, tokens must carry this `iss` claim (and `mint_token` is given it).
    jwt_issuer: str | None = Field(None, min_length=1)
    #: When set, tokens must carry this `aud` claim.
    jwt_audience: str | None = Field(None, min_length=1)
    #: Seconds one Prefect call may take before the orchestrator counts as unavailable;
    #: bounds the Prefect client's own retries, so a dead server answers 503 promptly.
    prefect_timeout: float = Field(10.0, gt=0)
    #: Seconds between two looks at a job in a Server-Sent Events stream.
    events_poll: float = Field(0.5, gt=0)
    #: Bytes a request body may have; a larger one is refused with 413 before it is parsed.
    max_body_bytes: int = Field(1024 * 1024, ge=1024)

    #: The dev mode's secret, made on first use of `secret`: tokens die with the process.
    #: Private, so that no variable in the environment can make the shim log a token.
    _generated: str | None = PrivateAttr(None)

    @property
    def secret(self) -> str:
        """The key of the tokens; refused (`InsecureSettings`, `WeakSecret`) when unsafe.

        Checked here, on use, rather than when the settings are read: only the shim signs or
        checks tokens, and a worker must not refuse to start for want of a secret it never gets
        (deployments/system/stack.py passes it to the shim alone).
        """
        given = self.jwt_secret.get_secret_value() if self.jwt_secret is not None else ""
        if not given:
            if not self.api_dev:
                raise InsecureSettings()
            if self._generated is None:
                self._generated = secrets.token_urlsafe(MIN_SECRET_BYTES)
            return self._generated
        # Dev mode too: a short secret given is a mistake worth hearing about at once.
        length = len(given.encode())
        if length < MIN_SECRET_BYTES:
            raise WeakSecret(length)
        return given

    @property
    def generated_secret(self) -> bool:
        """True when `secret` was generated here (dev mode, none given)."""
        return self._generated is not None


class StackSettings(BaseSettings):
    """`make up` itself: where the shim listens, how long a stop waits, which worker runs jobs."""

    model_config = _section("MM_")

    api_port: int = Field(3000, ge=1, le=65535, description="Port of the API shim.")
    stop_grace: float = Field(
        15.0, ge=0, description="Seconds running jobs get to finish on Ctrl-C before handed back."
    )
    worker_type: str = Field(
        "forkserver",
        description="`forkserver` (deployments/worker/forkserver.py) or Prefect's stock `process`.",
    )


class BackendSettings(BaseSettings):
    """Where Prefect keeps its state: embedded (both unset) or scaled (both set); the PREFECT_*
    settings they become are deployments/system/backends.py's."""

    model_config = _section("MM_")

    database_url: str | None = Field(
        None, description="Prefect's database, postgresql+asyncpg://USER[:PASS]@HOST:PORT/DB."
    )
    redis_url: str | None = Field(
        None, description="Redis for Prefect's messaging and leases, redis://[:PASS@]HOST:PORT/DB."
    )

    @field_validator("database_url")
    @classmethod
    def _asyncpg(cls, url: str | None) -> str | None:
        if url is not None and not url.startswith("postgresql+asyncpg://"):
            raise ValueError("MM_DATABASE_URL must start with postgresql+asyncpg://")
        return url

    @field_validator("redis_url")
    @classmethod
    def _redis(cls, url: str | None) -> str | None:
        if url is not None:
            parts = urlsplit(url)
            if parts.scheme != "redis" or not parts.hostname:
                raise ValueError("MM_REDIS_URL must look like redis://HOST:PORT/DB")
            redis_db(url)
        return url

    @model_validator(mode="after")
    def _both_or_neither(self) -> BackendSettings:
        if (self.database_url is None) != (self.redis_url is None):
            raise ValueError(
                "set both MM_DATABASE_URL and MM_REDIS_URL (scaled mode) or neither (embedded):"
                " several Prefect processes need both PostgreSQL and Redis"
            )
        return self

    @property
    def scaled(self) -> bool:
        return self.database_url is not None

    @property
    def mode(self) -> str:
        return "scaled" if self.scaled else "embedded"


def redis_db(url: str) -> int:
    """The database number of a redis:// URL (0 when it names none)."""
    path = urlsplit(url).path.strip("/")
    if not path:
        return 0
    if not path.isdigit():
        # Not the URL itself: it may hold the password.
        raise ValueError(f"the Redis database of MM_REDIS_URL must be a number, not {path!r}")
    return int(path)


class SupervisionSettings(BaseSettings):
    """How runs are watched: heartbeats, lock durations, attempts after crashes.

    Lock durations are checked against the queue table by `check_supervision`
    (deployments/control/automations.py), which has the table."""

    model_config = _section("MM_")

    heartbeat_seconds: int = Field(
        MIN_HEARTBEAT_SECONDS,
        ge=MIN_HEARTBEAT_SECONDS,
        description="PREFECT_FLOWS_HEARTBEAT_FREQUENCY of workers and flow runs.",
    )
    lock_durations: dict[str, float] = Field(
        default_factory=dict,
        description='Seconds per queue replacing the queue table\'s, e.g. {"backup": 50}.',
    )
    crash_attempts: int = Field(
        3, ge=1, description="Runs of one job in all, counting the first, when it keeps crashing."
    )


class MaintenanceSettings(BaseSettings):
    """When the maintenance flow runs by itself; checked against Prefect's cron syntax by
    `check_maintenance` (deployments/control/maintenance.py)."""

    model_config = _section("MM_MAINTENANCE_")

    cron: str = Field("0 3 * * *", description="Cron expression; empty: no schedule.")
    timezone: str = Field("UTC", description="IANA time zone of the cron expression.")

    @field_validator("cron")
    @classmethod
    def _stripped(cls, value: str) -> str:
        return value.strip()


class CheckSettings(BaseSettings):
    """When the archive check runs by itself, and how often each archive is re-read: the share
    of the archives one run re-reads is tasks/archive_checks.py's; the cron expression is
    checked against Prefect's syntax by `check_checks` (deployments/control/checks.py)."""

    model_config = _section("MM_CHECK_")

    cron: str = Field("0 4 * * *", description="Cron expression; empty: no schedule.")
    timezone: str = Field("UTC", description="IANA time zone of the cron expression.")
    days: int = Field(30, ge=1, description="Each stored archive is re-read within these days.")

    @field_validator("cron")
    @classmethod
    def _stripped(cls, value: str) -> str:
        return value.strip()


class NotifySettings(BaseSettings):
    """Who is told when something is wrong, and when a server's backups count as stale.

    The URLs are Apprise's (`mailtos://`, `json://`, `ntfy://`, `slack://`, ...); they may hold
    passwords, hence a secret, handed only to the Prefect notification block that sends."""

    model_config = _section("MM_NOTIFY_")

    urls: SecretStr | None = Field(
        None, description="Apprise URLs, separated by spaces or commas; none: no messages."
    )
    stale_grace_seconds: float = Field(
        7200, ge=0, description="Slack after a schedule's longest gap before a backup is stale."
    )
    digest_seconds: float = Field(
        300, gt=0, description="Failures within this window after the first make one message."
    )

    def url_list(self) -> list[str]:
        """The URLs one by one; `[]` when unset."""
        return split_urls(self.urls.get_secret_value() if self.urls else "")


def split_urls(text: str) -> list[str]:
    """Apprise URLs from a setting or the inventory: separated by spaces or commas."""
    return [url for url in re.split(r"[\s,]+", text) if url]


class JobRecordSettings(BaseSettings):
    """How long job records (flow runs) are kept; the policy is tasks/job_records.py's."""

    model_config = _section("MM_")

    completed_jobs_days: float = Field(7, ge=0, description="Age limit of completed jobs.")
    completed_jobs_per_queue: int = Field(1000, ge=0, description="Newest completed kept.")
    failed_jobs_days: float = Field(7, ge=0, description="Age limit of failed/crashed jobs.")


class KeepSettings(BaseSettings):
    """The default archive retention of every server; a server's `backup.keep` overrides it
    rule by rule (tasks/archive_retention.py)."""

    model_config = _section("MM_KEEP_")

    last: int = Field(7, ge=0, description="Newest completed backups kept per server.")
    daily: int = Field(7, ge=0, description="Days with a backup kept (the newest of each).")
    weekly: int = Field(4, ge=0, description="ISO weeks with a backup kept.")
    monthly: int = Field(6, ge=0, description="Months with a backup kept.")


class BenchSettings(BaseSettings):
    """`make bench` (bench/): where its data trees are cached, and its request log."""

    model_config = _section("MM_BENCH_")

    data: Path = Field(
        Path("~/.cache/medicine-man-bench"), description="Benchmark data trees, `~` expanded."
    )
    #: Set by bench/run_cost.py for the processes it counts requests of; read by
    #: bench/request_log/sitecustomize.py, which runs before anything is imported.
    request_log: Path | None = None


class SettingsError(ValueError):
    """An MM_* variable has a value that cannot work; the message names each such variable."""


class Settings(BaseModel):
    """Every MM_* setting, by section; each section reads its own variables when made."""

    paths: PathSettings = Field(default_factory=PathSettings)
    encryption: EncryptionSettings = Field(default_factory=EncryptionSettings)
    ssh: SSHSettings = Field(default_factory=SSHSettings)
    api: ApiSettings = Field(default_factory=ApiSettings)
    stack: StackSettings = Field(default_factory=StackSettings)
    backend: BackendSettings = Field(default_factory=BackendSettings)
    supervision: SupervisionSettings = Field(default_factory=SupervisionSettings)
    maintenance: MaintenanceSettings = Field(default_factory=MaintenanceSettings)
    check: CheckSettings = Field(default_factory=CheckSettings)
    notify: NotifySettings = Field(default_factory=NotifySettings)
    job_records: JobRecordSettings = Field(default_factory=JobRecordSettings)
    keep: KeepSettings = Field(default_factory=KeepSettings)
    bench: BenchSettings = Field(default_factory=BenchSettings)


def section_classes() -> dict[str, type[BaseSettings]]:
    """Each section's class, by its name in `Settings`."""
    classes: dict[str, type[BaseSettings]] = {}
    for name, field in Settings.model_fields.items():
        assert isinstance(field.annotation, type) and issubclass(field.annotation, BaseSettings)
        classes[name] = field.annotation
    return classes


def variable(section: type[BaseSettings], field: str) -> str:
    """The environment variable of a section's field, e.g. MM_SSH_CLIENT."""
    return f"{section.model_config.get('env_prefix', '')}{field}".upper()


def read_settings() -> Settings:
    """Every section from the environment; `SettingsError` names each variable that is wrong.

    Only the messages are kept, not pydantic's rendering of the values, which would put
    MM_DATABASE_URL's password into a log.
    """
    sections: dict[str, BaseSettings] = {}
    problems: list[str] = []
    for name, cls in section_classes().items():
        try:
            sections[name] = cls()
        except ValidationError as exc:
            for error in exc.errors():
                where = variable(cls, str(error["loc"][0])) if error["loc"] else f"MM_* ({name})"
                problems.append(f"{where}: {error['msg']}")
        except SourceError as exc:
            # A structured value (MM_LOCK_DURATIONS) that is not JSON: pydantic-settings names
            # the field, not the variable, and no value.
            field = re.search(r'field "(\w+)"', str(exc))
            where = variable(cls, field.group(1)) if field else f"MM_* ({name})"
            problems.append(f"{where}: not valid JSON")
    if problems:
        raise SettingsError("; ".join(problems))
    return Settings.model_validate(sections)


@lru_cache
def get_settings() -> Settings:
    """The settings of this process, read once from the environment."""
    return read_settings()
