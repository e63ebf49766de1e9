"""The server inventory: a YAML file of the servers we back up, scan and update."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit
from uuid import UUID

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from tasks.core.errors import InventoryError, ServerNotFound
from tasks.core.recipients import AgeRecipient
from tasks.core.schedules import CronExpression, TimeZone

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _remote_path(path: str) -> str:
    """A remote path is absolute, has no `..` part and no control characters."""
    if not path.startswith("/"):
        raise ValueError(f"{path!r} is not an absolute path")
    if _CONTROL.search(path):
        raise ValueError(f"{path!r} contains a control character")
    if ".." in path.split("/"):
        raise ValueError(f"{path!r} contains a '..' part")
    return path


def _user_id(user_id: str) -> str:
    """An owner is a token's `sub` as it is: not blank, no control characters."""
    if not user_id.strip():
        raise ValueError("an owner must be a non-empty user id (a token's `sub`)")
    if _CONTROL.search(user_id):
        raise ValueError(f"owner {user_id!r} contains a control character")
    return user_id


def _ping_url(url: str) -> str:
    """A ping URL is http(s) with a host: Healthchecks' and Uptime Kuma's are."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{url!r} is not an http:// or https:// URL")
    if _CONTROL.search(url):
        raise ValueError("contains a control character")
    return url


RemotePath = Annotated[str, AfterValidator(_remote_path)]
PingUrl = Annotated[str, Field(max_length=2048), AfterValidator(_ping_url)]
UserId = Annotated[str, Field(max_length=256), AfterValidator(_user_id)]
LocalPath = Annotated[Path, AfterValidator(lambda p: p.expanduser())]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class KeepSpec(_Model):
    """How many of the server's backup archives to keep; a rule left out is MM_KEEP_<RULE>."""

    #: The newest backups.
    last: int | None = Field(None, ge=0)
    #: The newest backup of each of this many days that have one; likewise weeks and months.
    daily: int | None = Field(None, ge=0)
    weekly: int | None = Field(None, ge=0)
    monthly: int | None = Field(None, ge=0)


class BackupSpec(_Model):
    """What to back up on a server, when, and what to run around it."""

    paths: list[RemotePath] = Field(min_length=1)
    #: Cron expression (UTC unless `timezone` is set); each tick runs a `backup:scheduled` job.
    schedule: CronExpression | None = None
    timezone: TimeZone = "UTC"
    #: Shell command run before the transfer, e.g. to stop a container.
    pre: str | None = None
    #: Shell command run after the transfer, also when the backup failed.
    post: str | None = None
    #: Retention of the server's archives (the maintenance flow); default: the MM_KEEP_* settings.
    keep: KeepSpec | None = None
    #: Encrypt every backup of this server (age format), whatever the request says: the
    #: operator's word, which a request's `encryption: false` does not undo.
    encrypt: bool = False
    #: The age public keys its encrypted backups are readable by; empty: MM_BACKUP_RECIPIENTS.
    recipients: list[AgeRecipient] = Field(default_factory=list)
    #: Called at the start, success and failure of each backup, as Healthchecks and Uptime
    #: Kuma expect (tasks/pings.py); a ping that fails never fails the backup.
    ping_url: PingUrl | None = None


class UpdateSpec(_Model):
    """How a server updates its software."""

    command: str | None = None
    #: Seconds the update command may run before it counts as hung.
    timeout: float = Field(3600.0, gt=0)


class Server(_Model):
    """One server of the inventory."""

    id: UUID
    name: str = Field(min_length=1, max_length=128)
    host: str = Field(min_length=1, max_length=255)
    port: int = Field(22, ge=1, le=65535)
    username: str = Field(min_length=1, max_length=64)
    private_key_file: LocalPath
    known_hosts_file: LocalPath = Path("~/.ssh/known_hosts").expanduser()
    backup: BackupSpec | None = None
    update: UpdateSpec | None = None
    #: The users (tokens' `sub`) who may run jobs on it through the API; none: only admins.
    owners: list[UserId] = Field(default_factory=list)
    #: Apprise URLs told about this server's failed jobs and stale backups, besides
    #: MM_NOTIFY_URLS; secrets, since they may hold passwords.
    notify: list[SecretStr] = Field(default_factory=list)

    @field_validator("name", "host", "username")
    @classmethod
    def _printable(cls, value: str) -> str:
        if _CONTROL.search(value):
            raise ValueError("contains a control character")
        return value


class Inventory(_Model):
    """All servers, by id."""

    servers: list[Server] = Field(default_factory=list)

    @model_validator(mode="after")
    def _unique_ids(self) -> Inventory:
        first: dict[UUID, int] = {}
        for index, server in enumerate(self.servers):
            if server.id in first:
                other = first[server.id]
                raise ValueError(
                    f"server #{index + 1} ({server.name}): id: {server.id} is already the id "
                    f"of server #{other + 1} ({self.servers[other].name})"
                )
            first[server.id] = index
        return self

    def get(self, server_id: UUID | str) -> Server:
        """The server with this id, or `ServerNotFound`."""
        wanted = str(server_id)
        for server in self.servers:
            if str(server.id) == wanted:
                return server
        raise server_not_found(server_id)

    def owned_by(self, user_id: str) -> list[Server]:
        """The servers whose `owners` name this user, in the file's order."""
        return [server for server in self.servers if user_id in server.owners]


def server_not_found(server_id: UUID | str) -> ServerNotFound:
    """The one answer for a server that is not there, or not the caller's to use."""
    return ServerNotFound(f"no server with id {server_id} in the inventory")


#: The last inventory read, by path, with the file's identity then (see `load_inventory`).
_read: dict[Path, tuple[tuple[int, int, int, int], Inventory]] = {}


def load_inventory(path: Path) -> Inventory:
    """Read and validate the inventory; errors name the file, the server and the field.

    The file is parsed again only when it changed (inode, size, modification or change time):
    the API checks the server of every enqueue against it, and parsing the YAML of a few dozen
    servers was two thirds of the API's CPU in a burst of enqueues. An edited file, or one
    replaced by a rename, is read on the next call; an invalid one raises on every call.
    """
    try:
        stat = path.stat()
    except FileNotFoundError:
        raise InventoryError(f"{path}: inventory file not found (set MM_INVENTORY)") from None
    except OSError as exc:
        raise InventoryError(f"{path}: cannot read the inventory: {exc}") from None
    identity = (stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns)
    key = path.absolute()
    cached = _read.get(key)
    if cached is not None and cached[0] == identity:
        return cached[1]
    inventory = _parse(path)
    _read[key] = (identity, inventory)
    return inventory


#: libyaml's safe loader where PyYAML was built with it: ~7x faster than the pure-Python one
#: (300 servers: 21 ms against 140-200 ms), and every run of a job reads the inventory.
_SAFE_LOADER: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _parse(path: Path) -> Inventory:
    try:
        raw = yaml.load(path.read_text(encoding="utf-8"), Loader=_SAFE_LOADER)
    except FileNotFoundError:
        raise InventoryError(f"{path}: inventory file not found (set MM_INVENTORY)") from None
    except (OSError, yaml.YAMLError) as exc:
        raise InventoryError(f"{path}: cannot read the inventory: {exc}") from None
    if raw is None:
        raw = {"servers": []}
    try:
        return Inventory.model_validate(raw)
    except ValidationError as exc:
        raise InventoryError(_describe(path, raw, exc)) from None


def _describe(path: Path, raw: Any, exc: ValidationError) -> str:
    """One line per problem: `file: server #N (name): field.path: message`."""
    lines = []
    for error in exc.errors():
        loc = list(error["loc"])
        where = str(path)
        if len(loc) >= 2 and loc[0] == "servers" and isinstance(loc[1], int):
            index = loc[1]
            name = "?"
            servers = raw.get("servers") if isinstance(raw, dict) else None
            if (
                isinstance(servers, list)
                and index < len(servers)
                and isinstance(servers[index], dict)
            ):
                name = _CONTROL.sub("?", str(servers[index].get("name", "?")))
            where += f": server #{index + 1} ({name})"
            loc = loc[2:]
        if not loc:  # a check across servers; its message says where
            lines.append(f"{where}: {error['msg'].removeprefix('Value error, ')}")
            continue
        field = ".".join(str(part) for part in loc)
        lines.append(f"{where}: {field}: {error['msg']}")
    return "\n".join(lines)
