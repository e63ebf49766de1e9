"""The SSH interface of the job tasks, its one error mapping, and the connection a job shares.

    Session (Protocol)      what every job task needs of a server
    ├── tasks.ssh.SSHSession        paramiko; its `download` goes through the OpenSSH transport
    │                               (`tasks.openssh.OpenSSHDownloader`) when that keeps its checks
    └── tasks.fake_ssh.FakeSession  scripted answers in memory, for unit tests of the job logic

Both real transports fail into the tree of `tasks.core.errors` through `connection_error`: each
says what kind of `Failure` it saw (paramiko by exception type, ssh by its exit 255 and
message), and this module alone words the error and picks its class, so a failure is retried or
not whichever transport carried it. `command_failed` words a remote command's non-zero exit
for every transport alike, and `repository_full` an archive that found the repository's disk
full (`archive_writes` maps the write's ENOSPC), which a transport would otherwise take for a
broken link.

`Connection` is one job's connection: opened by the first task that needs it (inside the task,
so its retries cover connecting), reused by the job's later tasks, closed by the flow. A backup
with pre and post commands opened four connections before (plan, pre, transfer, post); now one
paramiko connection carries the commands and the OpenSSH fast path one more for the archive
(tests/integration/test_connections.py), with a new one for post after a transfer longer than
REUSE_IDLE.
"""

from __future__ import annotations

import contextlib
import enum
import errno
import shlex
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

from tasks.atomic import ArchiveSink
from tasks.core.errors import (
    CommandOutcomeUnknown,
    HostKeyMismatch,
    HostKeyUnknown,
    JobError,
    PermanentError,
    RemoteCommandFailed,
    RepositoryFull,
    SSHAuthError,
    SSHConnectError,
    SSHDisconnected,
    SSHTimeout,
    TransientError,
)
from tasks.core.inventory import Server

#: Bytes of a command's stderr kept (its tail), whichever transport ran it.
STDERR_KEEP = 64 << 10
#: Lines of stderr an error message quotes.
TAIL_LINES = 20
#: Seconds a job's connection may sit unused and still be reused. Longer (a long transfer
#: through the ssh binary), and a NAT or firewall may have dropped it silently; paramiko would
#: then wait on it for its channel timeout (an hour) instead of failing, so a new one is opened.
REUSE_IDLE = 60.0


@dataclass(frozen=True)
class CommandResult:
    """What a finished remote command left behind."""

    exit_status: int
    stdout: bytes
    stderr: bytes

    @property
    def text(self) -> str:
        return self.stdout.decode("utf-8", "replace")

    def stderr_tail(self, lines: int = TAIL_LINES) -> str:
        return tail(self.stderr, lines)


def tail(stderr: bytes, lines: int = TAIL_LINES) -> str:
    """The last `lines` lines of a command's stderr, as text."""
    return "\n".join(stderr.decode("utf-8", "replace").splitlines()[-lines:])


def keep_tail(buffer: bytearray, chunk: bytes) -> None:
    """Append `chunk` to a stderr buffer, keeping only its last STDERR_KEEP bytes."""
    buffer.extend(chunk)
    if len(buffer) > STDERR_KEEP:
        del buffer[: len(buffer) - STDERR_KEEP]


OnLine = Callable[[str, str], object]
OnProgress = Callable[[int], object]


class Downloader(Protocol):
    """Streams a remote program's stdout into a local file: what both real transports do."""

    def download(
        self, argv: Sequence[str], archive: ArchiveSink, *, on_progress: OnProgress | None = None
    ) -> CommandResult:
        """Run `argv` (each argument quoted) with its stdout written into `archive`, counted and
        hashed; `on_progress(bytes so far)` as it grows. The exit status is the caller's."""
        ...


class Session(Downloader, Protocol):
    """Commands on one server; host key verified and our key accepted before the first."""

    server: Server

    def connect(self) -> None:
        """Connect now if not yet (a session may connect at its first command)."""
        ...

    @property
    def alive(self) -> bool:
        """Whether a next command may still go through this session."""
        ...

    def run(self, argv: Sequence[str], *, check: bool = True) -> CommandResult:
        """Run a program with these arguments (each quoted) and collect its output; with
        `check`, a non-zero exit raises `command_failed`'s error."""
        ...

    def run_lines(
        self,
        command: str,
        on_line: OnLine,
        *,
        timeout: float,
        check: bool = True,
        label: str | None = None,
    ) -> CommandResult:
        """Run an operator's shell command as written, each output line to `on_line(stream,
        line)`; `SSHTimeout` after `timeout` s; `label` names the command in error messages."""
        ...

    def close(self) -> None: ...


#: Opens a session to a server (checks done, maybe not connected yet).
Opener = Callable[[Server], Session]


class Failure(enum.Enum):
    """What went wrong with a connection, as a transport saw it."""

    #: The server's host key differs from the known one.
    HOST_KEY_CHANGED = "host key changed"
    #: The server's host key is not in the known-hosts file.
    HOST_KEY_UNKNOWN = "host key unknown"
    #: The server refused our key.
    AUTH_REFUSED = "auth refused"
    #: The server did not answer in time.
    TIMED_OUT = "timed out"
    #: The link failed: before the session was up (connect) or after (dropped).
    LINK = "link"


def connection_error(
    server: Server, failure: Failure, evidence: str, *, connected: bool
) -> JobError:
    """The error of `tasks.core.errors` for a failed connection, whichever transport saw it.

    Args:
        failure: what the transport saw.
        evidence: its own words for it (an exception's text, ssh's last line of stderr).
        connected: whether the session was up (data had arrived): a failed link is then a
            dropped connection, else one that could not be made.
    """
    where = f"{server.name} ({server.username}@{server.host}:{server.port})"
    known_hosts = server.known_hosts_file
    if failure is Failure.HOST_KEY_CHANGED:
        return HostKeyMismatch(f"host key of {where} changed: {evidence}; refusing to connect")
    if failure is Failure.HOST_KEY_UNKNOWN:
        return HostKeyUnknown(
            f"host key of {where}{f' ({evidence})' if evidence else ''} is not in {known_hosts}; "
            f"add it with: ssh-keyscan -p PORT HOST >> {known_hosts}"
        )
    if failure is Failure.AUTH_REFUSED:
        return SSHAuthError(f"{where} refused our key {server.private_key_file}: {evidence}")
    if failure is Failure.TIMED_OUT:
        return SSHTimeout(f"{where} did not answer in time: {evidence}")
    if connected:
        return SSHDisconnected(f"connection to {where} dropped: {evidence}")
    return SSHConnectError(f"cannot connect to {where}: {evidence}")


#: errno values of a write that found no room: the disk is full, or the user's quota used up.
NO_ROOM = frozenset({errno.ENOSPC, errno.EDQUOT})


def repository_full(received: int) -> RepositoryFull:
    """The error of a download whose archive found no room in the repository, whichever
    transport wrote it (`archive_writes` for ours; ssh writing the file itself: tasks.openssh)."""
    return RepositoryFull(
        f"the backup repository's disk is full (No space left on device) after {received} "
        "bytes of this archive; free space or prune old backups (medicine-man clean)"
    )


@contextlib.contextmanager
def archive_writes(archive: ArchiveSink) -> Iterator[None]:
    """Writes into `archive` inside: one that finds no room raises `repository_full`, not the
    `OSError` a transport would take for a dropped link (and retry, filling the disk again)."""
    try:
        yield
    except OSError as exc:
        if exc.errno in NO_ROOM:
            raise repository_full(archive.size) from None
        raise


def command_failed(
    server: Server, command: str, status: int, stderr: bytes, label: str | None
) -> RemoteCommandFailed:
    """The error of a remote command that exited non-zero.

    `label` (e.g. "the pre command"): an operator's command, which the message names by this
    label only; its text and output go into `detail` (`tasks.core.errors`).
    """
    stderr_tail = tail(stderr)
    full = f"{server.name}: {short(command)} exited with status {status}" + (
        f": {stderr_tail}" if stderr_tail else ""
    )
    if label is None:
        return RemoteCommandFailed(full, exit_status=status, stderr_tail=stderr_tail)
    # Its output may echo what the command holds (`set -x`, a failing curl with a token).
    return RemoteCommandFailed(
        f"{server.name}: {label} exited with status {status}",
        exit_status=status,
        stderr_tail=stderr_tail,
        detail=full,
    )


def short(command: str, limit: int = 120) -> str:
    """A command as error messages quote it."""
    return repr(command if len(command) <= limit else command[: limit - 3] + "...")


def quoted(argv: Sequence[str]) -> str:
    """An argument list as one remote shell command, every argument quoted."""
    return shlex.join(argv)


class Connection:
    """One job's connection to its server, shared by the job's tasks.

    Opened at the first `session()` (inside a task, whose retries cover connecting) and kept
    for the next task; a session that failed other than with a `PermanentError` (which is about
    a command or the job, not the link), is no longer alive or sat unused past REUSE_IDLE is
    closed, and the next `session()` opens a new one. The flow closes it at its end.
    Not thread-safe: a job's tasks take it in turns, as a flow calls them.
    """

    def __init__(self, server: Server, opener: Opener) -> None:
        self.server = server
        self._opener = opener
        self._session: Session | None = None
        self._last_used = 0.0
        #: How many sessions this connection opened: one per job when nothing broke.
        self.opened = 0

    @contextlib.contextmanager
    def session(self) -> Iterator[Session]:
        current = self._session
        if current is not None and (
            not current.alive or time.monotonic() - self._last_used > REUSE_IDLE
        ):
            self.close()
            current = None
        if current is None:
            current = self._opener(self.server)
            self._session = current
            self.opened += 1
        # When it was taken, not given back: a task may hold it through a long transfer over
        # the ssh binary while its own link idles.
        self._last_used = time.monotonic()
        try:
            yield current
        except PermanentError:
            raise
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            session.close()

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


@contextlib.contextmanager
def session_for(server: Server, connection: Connection | None, opener: Opener) -> Iterator[Session]:
    """The job's shared session, or one of the task's own (closed after) when it has none."""
    if connection is not None:
        with connection.session() as session:
            yield session
        return
    with Connection(server, opener) as own, own.session() as session:
        yield session


def run_once(
    session: Session, command: str, on_line: OnLine, *, timeout: float, label: str
) -> CommandResult:
    """Run an operator's command that changes the server (a hook, an update): connecting may
    fail and be retried, but once the command started, a dropped link or a timeout means it
    may still be running there, and running it again could do its work twice or race itself.
    Such a failure is `CommandOutcomeUnknown`, which is not retried."""
    session.connect()
    try:
        return session.run_lines(command, on_line, timeout=timeout, label=label)
    except TransientError as exc:
        raise CommandOutcomeUnknown(
            f"{session.server.name}: {label} started and its end was not seen ({exc}); it may"
            " still be running there, so it is not run again",
            detail=exc.detail,
        ) from exc
