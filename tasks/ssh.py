"""The paramiko transport: `SSHSession`, the `tasks.remote.Session` of every job task.

Everything that crosses to a server goes through an `SSHSession` (`open_session`, `connect`, or
a job's `tasks.remote.Connection` from `job_connection`). Commands given as argument lists are
quoted here (never a shell string built by hand); the operator's own shell commands from the
inventory (pre/post/update) go through `run_lines`, as written there. The key file and the
known-hosts file are checked once per session, when it opens; paramiko and socket exceptions
become our own (`tasks.core.errors`) in `_translated`, through `tasks.remote.connection_error`.
`download` streams through the system OpenSSH client (`tasks.openssh`) when that transport can
keep every property of this one, and through this connection otherwise.
"""

from __future__ import annotations

import contextlib
import functools
import select
import socket
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, cast

import paramiko

from tasks import openssh
from tasks.atomic import ArchiveSink
from tasks.core.errors import (
    HostKeyUnknown,
    JobError,
    SSHAuthError,
    SSHDisconnected,
    SSHTimeout,
)
from tasks.core.inventory import Server
from tasks.core.settings import SSHSettings, get_settings
from tasks.remote import (
    CommandResult,
    Connection,
    Failure,
    OnLine,
    OnProgress,
    archive_writes,
    command_failed,
    connection_error,
    keep_tail,
    quoted,
    short,
)

__all__ = ["CommandResult", "SSHSession", "connect", "download", "job_connection", "open_session"]

# These make paramiko stream at ~0.97x of OpenSSH instead of ~0.54x (measured: docs/DESIGN.md,
# "Backups stream through OpenSSH").
WINDOW_SIZE = 8 << 20
MAX_PACKET_SIZE = 256 << 10
READ_SIZE = 1 << 20
FAST_CIPHERS = ("aes128-gcm@openssh.com", "aes256-gcm@openssh.com")


def _tuned_transport(sock: socket.socket, **kwargs: Any) -> paramiko.Transport:
    transport = paramiko.Transport(
        sock,
        default_window_size=WINDOW_SIZE,
        default_max_packet_size=MAX_PACKET_SIZE,
        disabled_algorithms=kwargs.get("disabled_algorithms"),
    )
    options = transport.get_security_options()
    available = tuple(options.ciphers)
    options.ciphers = tuple(c for c in FAST_CIPHERS if c in available) + tuple(
        c for c in available if c not in FAST_CIPHERS
    )
    return transport


class _UnknownHostKey(Exception):
    """Raised by `_RejectUnknownHost` inside paramiko, mapped by `_translated`; not an
    `SSHException`, so no handler of paramiko's can take it for a broken link."""

    def __init__(self, key_name: str) -> None:
        super().__init__(key_name)
        self.key_name = key_name


class _RejectUnknownHost(paramiko.MissingHostKeyPolicy):
    """Never trust a key on first use: the operator adds it to known_hosts."""

    def missing_host_key(
        self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey
    ) -> None:
        raise _UnknownHostKey(key.get_name())


def _failure(exc: BaseException) -> tuple[Failure, str] | None:
    """What kind of failure a paramiko or socket exception is, and its words; None: not ours."""
    if isinstance(exc, _UnknownHostKey):
        return Failure.HOST_KEY_UNKNOWN, exc.key_name
    if isinstance(exc, paramiko.BadHostKeyException):
        return Failure.HOST_KEY_CHANGED, (
            f"got {exc.key.get_name()} {exc.key.get_fingerprint().hex()}, known_hosts has "
            f"{exc.expected_key.get_name()} {exc.expected_key.get_fingerprint().hex()}"
        )
    if isinstance(exc, paramiko.AuthenticationException):
        return Failure.AUTH_REFUSED, str(exc)
    if isinstance(exc, TimeoutError):
        return Failure.TIMED_OUT, str(exc) or "timed out"
    if isinstance(exc, paramiko.SSHException | EOFError | ConnectionError | OSError):
        return Failure.LINK, str(exc)
    return None


@contextlib.contextmanager
def _translated(server: Server, connected: bool) -> Iterator[None]:
    """Turn paramiko and socket exceptions into the error tree of `tasks.core.errors`."""
    try:
        yield
    except JobError:
        raise
    except Exception as exc:
        seen = _failure(exc)
        if seen is None:
            raise
        raise connection_error(server, *seen, connected=connected) from None


def _load_key(server: Server) -> paramiko.PKey:
    path = server.private_key_file
    try:
        return paramiko.PKey.from_path(path)
    except FileNotFoundError:
        raise SSHAuthError(f"{server.name}: private key file {path} not found") from None
    except PermissionError:
        raise SSHAuthError(f"{server.name}: private key file {path} is not readable") from None
    except paramiko.PasswordRequiredException:
        raise SSHAuthError(
            f"{server.name}: private key file {path} is encrypted; use an unencrypted key"
        ) from None
    except (paramiko.SSHException, ValueError) as exc:
        raise SSHAuthError(f"{server.name}: cannot load private key {path}: {exc}") from None


def _require_known_hosts(server: Server) -> Path:
    known_hosts = server.known_hosts_file
    if not known_hosts.is_file():
        raise HostKeyUnknown(
            f"{server.name}: known-hosts file {known_hosts} not found; host keys are always checked"
        )
    return known_hosts


def open_session(server: Server, settings: SSHSettings | None = None) -> SSHSession:
    """A session to `server`, its key file and known-hosts file checked; it connects at its
    first command (or `connect()`), so a download through OpenSSH opens no paramiko link."""
    settings = settings or get_settings().ssh
    return SSHSession(server, settings, _load_key(server), _require_known_hosts(server))


@contextlib.contextmanager
def connect(server: Server, settings: SSHSettings | None = None) -> Iterator[SSHSession]:
    """An authenticated session with a verified host key, closed on exit."""
    session = open_session(server, settings)
    try:
        session.connect()
        yield session
    finally:
        session.close()


def job_connection(server: Server, settings: SSHSettings | None = None) -> Connection:
    """The connection a job's tasks share (`tasks.remote.Connection`), over paramiko."""
    return Connection(server, functools.partial(open_session, settings=settings))


def download(
    server: Server,
    argv: Sequence[str],
    archive: ArchiveSink,
    *,
    on_progress: OnProgress | None = None,
    settings: SSHSettings | None = None,
) -> CommandResult:
    """`SSHSession.download` on a session of its own."""
    session = open_session(server, settings)
    try:
        return session.download(argv, archive, on_progress=on_progress)
    finally:
        session.close()


class SSHSession:
    """Commands on one server over one paramiko connection, opened at the first of them.

    Opened by `open_session`, which has checked the key file and the known-hosts file.
    """

    def __init__(
        self, server: Server, settings: SSHSettings, key: paramiko.PKey, known_hosts: Path
    ) -> None:
        self.server = server
        self._settings = settings
        self._key = key
        self._known_hosts = known_hosts
        self._client: paramiko.SSHClient | None = None
        self._idle_timeout = settings.idle_timeout

    def connect(self) -> None:
        """Connect and log in now if not yet: the host key verified, our key accepted."""
        if self._client is not None:
            return
        settings = self._settings
        client = paramiko.SSHClient()
        try:
            with _translated(self.server, connected=False):
                client.load_host_keys(str(self._known_hosts))
                client.set_missing_host_key_policy(_RejectUnknownHost())
                client.connect(
                    self.server.host,
                    port=self.server.port,
                    username=self.server.username,
                    pkey=self._key,
                    timeout=settings.connect_timeout,
                    banner_timeout=settings.connect_timeout,
                    auth_timeout=settings.connect_timeout,
                    allow_agent=False,
                    look_for_keys=False,
                    # The stubs describe an older paramiko; 5.x passes only `disabled_algorithms`.
                    transport_factory=cast(Any, _tuned_transport),
                )
        except BaseException:
            client.close()
            raise
        self._client = client

    @property
    def alive(self) -> bool:
        if self._client is None:
            return True  # not connected yet: the next command connects
        transport = self._client.get_transport()
        return transport is not None and transport.is_active()

    def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            client.close()

    def run(self, argv: Sequence[str], *, check: bool = True) -> CommandResult:
        """Run a program with these arguments (each quoted) and collect its output."""
        return self._collect(quoted(argv), check=check)

    def download(
        self, argv: Sequence[str], archive: ArchiveSink, *, on_progress: OnProgress | None = None
    ) -> CommandResult:
        """Run a program on the server and write its stdout into `archive`, counted and hashed.

        Through the system OpenSSH client when `settings.client` allows it and
        `openssh.unusable` finds nothing against it (about 2x faster, BENCHMARKS.md), on a
        connection of its own; through this session's paramiko connection otherwise. The same
        errors come out either way. The exit status is the caller's to judge.
        """
        if self._settings.client != "paramiko" and openssh.unusable(self.server) is None:
            downloader = openssh.OpenSSHDownloader(self.server, self._settings)
            return downloader.download(argv, archive, on_progress=on_progress)

        def write(chunk: bytes) -> None:
            # Inside `stream`'s mapping of paramiko's errors, where an OSError is a broken link.
            with archive_writes(archive):
                archive.write(chunk)
            if on_progress is not None:
                on_progress(archive.size)

        return self.stream(argv, write, check=False)

    def stream(
        self, argv: Sequence[str], write: Callable[[bytes], object], *, check: bool = True
    ) -> CommandResult:
        """Run a program and hand its stdout to `write` in large blocks as it arrives."""
        command = quoted(argv)
        with _translated(self.server, connected=True):
            channel = self._open(command)
            stderr = bytearray()
            try:
                while True:
                    data = channel.recv(READ_SIZE)
                    if not data:
                        break
                    write(data)
                    if channel.recv_stderr_ready():
                        keep_tail(stderr, channel.recv_stderr(READ_SIZE))
                return self._finish(channel, command, b"", stderr, check=check)
            finally:
                channel.close()

    def run_lines(
        self,
        command: str,
        on_line: OnLine,
        *,
        timeout: float,
        check: bool = True,
        label: str | None = None,
    ) -> CommandResult:
        """Run a shell command, passing each output line to `on_line(stream, line)`.

        Fails with `SSHTimeout` when the command runs longer than `timeout` seconds, and with
        `RemoteCommandFailed` (exit status and stderr tail) when `check` and it exits non-zero.
        `label` (e.g. "the pre command"): an operator's command, which error messages name by
        this label only, its text and output going into their `detail` (`tasks.core.errors`).
        """
        deadline = time.monotonic() + timeout
        with _translated(self.server, connected=True):
            channel = self._open(command)
            pending = {"stdout": bytearray(), "stderr": bytearray()}
            stderr = bytearray()
            try:
                while True:
                    if time.monotonic() > deadline:
                        raise SSHTimeout(
                            f"{self.server.name}: command still running after {timeout:.0f} s"
                        )
                    got = False
                    if channel.recv_ready():
                        _feed_lines(pending["stdout"], channel.recv(65536), "stdout", on_line)
                        got = True
                    if channel.recv_stderr_ready():
                        chunk = channel.recv_stderr(65536)
                        keep_tail(stderr, chunk)
                        _feed_lines(pending["stderr"], chunk, "stderr", on_line)
                        got = True
                    if got:
                        continue
                    if channel.exit_status_ready() or channel.closed:
                        # Output may still be in flight after the exit status; one last drain.
                        if not (channel.recv_ready() or channel.recv_stderr_ready()):
                            break
                        continue
                    select.select([channel], [], [], 0.5)
                for name, rest in pending.items():
                    if rest:
                        on_line(name, rest.decode("utf-8", "replace"))
                return self._finish(channel, command, b"", stderr, check=check, label=label)
            finally:
                channel.close()

    def _collect(self, command: str, *, check: bool) -> CommandResult:
        stdout = bytearray()
        stderr = bytearray()

        def collect(stream: str, line: str) -> None:
            target = stdout if stream == "stdout" else stderr
            target.extend(line.encode() + b"\n")

        result = self.run_lines(command, collect, timeout=self._idle_timeout, check=check)
        return CommandResult(result.exit_status, bytes(stdout), result.stderr)

    def _open(self, command: str) -> paramiko.Channel:
        self.connect()
        assert self._client is not None
        transport = self._client.get_transport()
        if transport is None or not transport.is_active():
            raise SSHDisconnected(f"connection to {self.server.name} is closed")
        channel = transport.open_session(window_size=WINDOW_SIZE, max_packet_size=MAX_PACKET_SIZE)
        channel.settimeout(self._idle_timeout)
        channel.exec_command(command)
        return channel

    def _finish(
        self,
        channel: paramiko.Channel,
        command: str,
        stdout: bytes,
        stderr: bytearray,
        *,
        check: bool,
        label: str | None = None,
    ) -> CommandResult:
        name = self.server.name
        while channel.recv_stderr_ready():
            keep_tail(stderr, channel.recv_stderr(READ_SIZE))
        if not channel.status_event.wait(self._idle_timeout):
            raise SSHTimeout(
                f"{name}: no exit status for {label or short(command)}",
                detail=f"{name}: no exit status for {short(command)}" if label else None,
            )
        status = channel.exit_status
        if status == -1:
            # The channel closed without an exit status: the server or the link died.
            raise SSHDisconnected(
                f"{name}: connection dropped during {label or short(command)}",
                detail=f"{name}: connection dropped during {short(command)}" if label else None,
            )
        result = CommandResult(status, stdout, bytes(stderr))
        if check and status != 0:
            raise command_failed(self.server, command, status, bytes(stderr), label)
        return result


def _feed_lines(
    pending: bytearray, chunk: bytes, stream: str, on_line: Callable[[str, str], object]
) -> None:
    pending.extend(chunk)
    *complete, rest = pending.split(b"\n")
    for line in complete:
        on_line(stream, line.decode("utf-8", "replace"))
    pending[:] = rest
