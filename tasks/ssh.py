"""The SSH layer: run a command, stream its output, over one paramiko connection.

Everything that crosses to a server goes through `SSHSession`, or `download` for an archive.
Commands given as argument lists are quoted here (never a shell string built by hand); the
operator's own shell commands from the inventory (pre/post/update) go through `run_shell`,
named so the difference shows. Paramiko and socket exceptions become our own (`tasks.core.errors`)
in `_translated`, and nowhere else; `download` streams through the system OpenSSH client when
`tasks.openssh` can keep every property of this module, and maps ssh's failures likewise.
"""

from __future__ import annotations

import contextlib
import select
import shlex
import socket
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import paramiko

from tasks import openssh
from tasks.atomic import HashingWriter
from tasks.core.errors import (
    HostKeyMismatch,
    HostKeyUnknown,
    JobError,
    RemoteCommandFailed,
    SSHAuthError,
    SSHConnectError,
    SSHDisconnected,
    SSHTimeout,
)
from tasks.core.inventory import Server
from tasks.core.settings import SSHSettings, get_settings

# These make paramiko stream at ~0.97x of OpenSSH instead of ~0.54x (measured: docs/DESIGN.md,
# "Backups stream through OpenSSH").
WINDOW_SIZE = 8 << 20
MAX_PACKET_SIZE = 256 << 10
READ_SIZE = 1 << 20
FAST_CIPHERS = ("aes128-gcm@openssh.com", "aes256-gcm@openssh.com")
STDERR_KEEP = 64 << 10


@dataclass(frozen=True)
class CommandResult:
    """What a finished remote command left behind."""

    exit_status: int
    stdout: bytes
    stderr: bytes

    @property
    def text(self) -> str:
        return self.stdout.decode("utf-8", "replace")

    def stderr_tail(self, lines: int = 20) -> str:
        return "\n".join(self.stderr.decode("utf-8", "replace").splitlines()[-lines:])


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


class _RejectUnknownHost(paramiko.MissingHostKeyPolicy):
    """Never trust a key on first use: the operator adds it to known_hosts."""

    def __init__(self, known_hosts: str) -> None:
        self._known_hosts = known_hosts

    def missing_host_key(
        self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey
    ) -> None:
        raise HostKeyUnknown(
            f"host key of {hostname} ({key.get_name()}) is not in {self._known_hosts}; "
            f"add it with: ssh-keyscan -p PORT HOST >> {self._known_hosts}"
        )


@contextlib.contextmanager
def _translated(server: Server, connected: bool) -> Iterator[None]:
    """Turn paramiko and socket exceptions into the error tree of `tasks.core.errors`."""
    where = f"{server.name} ({server.username}@{server.host}:{server.port})"
    try:
        yield
    except JobError:
        raise
    except paramiko.BadHostKeyException as exc:
        raise HostKeyMismatch(
            f"host key of {where} changed: got {exc.key.get_name()} "
            f"{exc.key.get_fingerprint().hex()}, known_hosts has {exc.expected_key.get_name()} "
            f"{exc.expected_key.get_fingerprint().hex()}; refusing to connect"
        ) from None
    except paramiko.AuthenticationException as exc:
        raise SSHAuthError(f"{where} refused our key {server.private_key_file}: {exc}") from None
    except TimeoutError as exc:
        raise SSHTimeout(f"{where} did not answer in time: {exc or 'timed out'}") from None
    except (paramiko.SSHException, EOFError, ConnectionError, OSError) as exc:
        if connected:
            raise SSHDisconnected(f"connection to {where} dropped: {exc}") from None
        raise SSHConnectError(f"cannot connect to {where}: {exc}") from None


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


@contextlib.contextmanager
def connect(server: Server, settings: SSHSettings | None = None) -> Iterator[SSHSession]:
    """An authenticated session with a verified host key, closed on exit."""
    settings = settings or get_settings().ssh
    key = _load_key(server)
    known_hosts = _require_known_hosts(server)
    client = paramiko.SSHClient()
    try:
        with _translated(server, connected=False):
            client.load_host_keys(str(known_hosts))
            client.set_missing_host_key_policy(_RejectUnknownHost(str(known_hosts)))
            client.connect(
                server.host,
                port=server.port,
                username=server.username,
                pkey=key,
                timeout=settings.connect_timeout,
                banner_timeout=settings.connect_timeout,
                auth_timeout=settings.connect_timeout,
                allow_agent=False,
                look_for_keys=False,
                # The stubs describe an older paramiko; 5.x passes only `disabled_algorithms`.
                transport_factory=cast(Any, _tuned_transport),
            )
        yield SSHSession(client, server, settings)
    finally:
        client.close()


def download(
    server: Server,
    argv: Sequence[str],
    archive: HashingWriter,
    *,
    on_progress: Callable[[int], object] | None = None,
    settings: SSHSettings | None = None,
) -> CommandResult:
    """Run a program on the server and write its stdout into `archive`, counted and hashed.

    Through the system OpenSSH client when `settings.client` allows it and
    `openssh.unusable` finds nothing against it (about 2x faster, BENCHMARKS.md); through
    paramiko otherwise. The same checks come first either way (key file, known-hosts file),
    and the same errors come out. The exit status is the caller's to judge (`check=False`).
    """
    settings = settings or get_settings().ssh
    _load_key(server)
    _require_known_hosts(server)
    if settings.client != "paramiko" and openssh.unusable(server) is None:
        status, stderr = openssh.download(
            server, settings, shlex.join(argv), archive, on_progress=on_progress
        )
        return CommandResult(status, b"", stderr)

    def write(chunk: bytes) -> None:
        archive.write(chunk)
        if on_progress is not None:
            on_progress(archive.size)

    with connect(server, settings) as ssh:
        return ssh.stream(argv, write, check=False)


class SSHSession:
    """Commands on one connected server."""

    def __init__(self, client: paramiko.SSHClient, server: Server, settings: SSHSettings) -> None:
        self._client = client
        self.server = server
        self._idle_timeout = settings.idle_timeout

    def run(self, argv: Sequence[str], *, check: bool = True) -> CommandResult:
        """Run a program with these arguments (each quoted) and collect its output."""
        return self._collect(shlex.join(argv), check=check)

    def run_shell(self, command: str, *, check: bool = True) -> CommandResult:
        """Run an operator's shell command from the inventory, as written there."""
        return self._collect(command, check=check)

    def stream(
        self, argv: Sequence[str], write: Callable[[bytes], object], *, check: bool = True
    ) -> CommandResult:
        """Run a program and hand its stdout to `write` in large blocks as it arrives."""
        command = shlex.join(argv)
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
                        _keep_tail(stderr, channel.recv_stderr(READ_SIZE))
                return self._finish(channel, command, b"", stderr, check=check)
            finally:
                channel.close()

    def run_lines(
        self,
        command: str,
        on_line: Callable[[str, str], object],
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
                        _keep_tail(stderr, chunk)
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
            _keep_tail(stderr, channel.recv_stderr(READ_SIZE))
        if not channel.status_event.wait(self._idle_timeout):
            raise SSHTimeout(
                f"{name}: no exit status for {label or _short(command)}",
                detail=f"{name}: no exit status for {_short(command)}" if label else None,
            )
        status = channel.exit_status
        if status == -1:
            # The channel closed without an exit status: the server or the link died.
            raise SSHDisconnected(
                f"{name}: connection dropped during {label or _short(command)}",
                detail=f"{name}: connection dropped during {_short(command)}" if label else None,
            )
        result = CommandResult(status, stdout, bytes(stderr))
        if check and status != 0:
            raise _failed(self.server, command, status, bytes(stderr), label)
        return result


def _failed(
    server: Server, command: str, status: int, stderr: bytes, label: str | None
) -> RemoteCommandFailed:
    tail = "\n".join(stderr.decode("utf-8", "replace").splitlines()[-20:])
    full = f"{server.name}: {_short(command)} exited with status {status}" + (
        f": {tail}" if tail else ""
    )
    if label is None:
        return RemoteCommandFailed(full, exit_status=status, stderr_tail=tail)
    # Its output may echo what the command holds (`set -x`, a failing curl with a token).
    return RemoteCommandFailed(
        f"{server.name}: {label} exited with status {status}",
        exit_status=status,
        stderr_tail=tail,
        detail=full,
    )


def _short(command: str, limit: int = 120) -> str:
    return repr(command if len(command) <= limit else command[: limit - 3] + "...")


def _keep_tail(buffer: bytearray, chunk: bytes) -> None:
    buffer.extend(chunk)
    if len(buffer) > STDERR_KEEP:
        del buffer[: len(buffer) - STDERR_KEEP]


def _feed_lines(
    pending: bytearray, chunk: bytes, stream: str, on_line: Callable[[str, str], object]
) -> None:
    pending.extend(chunk)
    *complete, rest = pending.split(b"\n")
    for line in complete:
        on_line(stream, line.decode("utf-8", "replace"))
    pending[:] = rest
