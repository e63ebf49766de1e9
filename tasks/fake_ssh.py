"""An SSH server in memory: scripted answers per command, every call recorded.

The `tasks.remote.Session` of unit tests, as httpx's `MockTransport` is its client's transport
(docs/ARCHITECTURE.md): the job logic of a flow (which commands, in which order, which errors
come out and whether they are retried) runs in milliseconds, beside the real-sshd integration
tests, never instead of them. Commands are matched as the server would receive them: argument
lists quoted exactly as `tasks.ssh` quotes them, an operator's command as written.

    fake = FakeSSH()
    fake.reply(["uname", "-srm"], stdout=b"Linux 6.1 x86_64\\n")
    fake.reply(lambda command: command.startswith("tar "), stdout=b"archive bytes")
    fake.fail_connect(SSHConnectError("refused"))         # the next connection fails
    with Connection(server, fake.open) as connection: ...
    fake.commands                                         # what ran, in order
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from tasks.atomic import ArchiveSink
from tasks.core.errors import JobError, TransientError
from tasks.core.inventory import Server
from tasks.remote import (
    CommandResult,
    OnLine,
    OnProgress,
    archive_writes,
    command_failed,
    quoted,
)

Match = str | Sequence[str] | Callable[[str], bool]


@dataclass
class Reply:
    """One scripted answer: exit status and output, or an error raised instead."""

    status: int = 0
    stdout: bytes = b""
    stderr: bytes = b""
    #: Raised instead of answering (a dropped link, a timeout); its class decides retries.
    raises: JobError | None = None
    #: How many commands it answers; None: all of them.
    times: int | None = None


@dataclass(frozen=True)
class Call:
    """One thing a task asked of the fake server."""

    #: "connect", "run", "run_lines", "download" or "close".
    kind: str
    #: The command as the server received it; "" for connect and close.
    command: str = ""
    #: Which session (1 for the first one opened) it went through.
    session: int = 0


@dataclass
class FakeSSH:
    """The fake server: its script, and what was asked of it."""

    calls: list[Call] = field(default_factory=list)
    _script: list[tuple[Callable[[str], bool], Reply]] = field(default_factory=list)
    _connect_errors: list[JobError] = field(default_factory=list)
    sessions: int = 0

    def reply(
        self,
        match: Match,
        *,
        status: int = 0,
        stdout: bytes = b"",
        stderr: bytes = b"",
        raises: JobError | None = None,
        times: int | None = None,
    ) -> None:
        """Answer commands that `match` (an argument list, a shell command, or a test of the
        command as received); the first matching reply still in use answers."""
        if callable(match):
            test = match
        else:
            expected = match if isinstance(match, str) else quoted(match)
            test = expected.__eq__
        self._script.append((test, Reply(status, stdout, stderr, raises, times)))

    def fail_connect(self, error: JobError) -> None:
        """The next connection fails with `error` (once per call of this)."""
        self._connect_errors.append(error)

    def open(self, server: Server) -> FakeSession:
        """A `tasks.remote.Opener`: a new session, as `tasks.ssh.open_session` makes one."""
        self.sessions += 1
        return FakeSession(self, server, self.sessions)

    @property
    def commands(self) -> list[str]:
        """Every command received, in order."""
        return [call.command for call in self.calls if call.command]

    @property
    def connections(self) -> int:
        """How many sessions connected for commands (a download needs none: the real one may
        go through the ssh binary, a connection of its own)."""
        return len({call.session for call in self.calls if call.kind == "connect"})

    def answer(self, command: str) -> Reply:
        for test, reply in self._script:
            if (reply.times is None or reply.times > 0) and test(command):
                if reply.times is not None:
                    reply.times -= 1
                return reply
        # Loud, as MockTransport's handler would be: a test must script what a task sends.
        raise AssertionError(f"the fake server has no answer scripted for {command!r}")


class FakeSession:
    """A `tasks.remote.Session` answered by a `FakeSSH`."""

    def __init__(self, fake: FakeSSH, server: Server, number: int) -> None:
        self.server = server
        self._fake = fake
        self._number = number
        self._connected = False
        self._closed = False
        #: Set by a scripted error that drops the link, as a real session would be dead then.
        self._dead = False

    @property
    def alive(self) -> bool:
        return not (self._closed or self._dead)

    def connect(self) -> None:
        if self._connected:
            return
        self._record("connect", "")
        if self._fake._connect_errors:
            raise self._fake._connect_errors.pop(0)
        self._connected = True

    def close(self) -> None:
        self._closed = True
        self._record("close", "")

    def run(self, argv: Sequence[str], *, check: bool = True) -> CommandResult:
        return self._result("run", quoted(argv), check=check, label=None)

    def run_lines(
        self,
        command: str,
        on_line: OnLine,
        *,
        timeout: float,
        check: bool = True,
        label: str | None = None,
    ) -> CommandResult:
        result = self._result("run_lines", command, check=False, label=label)
        for stream, data in (("stdout", result.stdout), ("stderr", result.stderr)):
            for line in data.decode("utf-8", "replace").splitlines():
                on_line(stream, line)
        if check and result.exit_status != 0:
            raise command_failed(self.server, command, result.exit_status, result.stderr, label)
        return CommandResult(result.exit_status, b"", result.stderr)

    def download(
        self, argv: Sequence[str], archive: ArchiveSink, *, on_progress: OnProgress | None = None
    ) -> CommandResult:
        result = self._result("download", quoted(argv), check=False, label=None)
        # Two writes, so a caller's progress moves as it would during a real transfer.
        half = len(result.stdout) // 2
        for chunk in (result.stdout[:half], result.stdout[half:]):
            if chunk:
                with archive_writes(archive):  # a full disk fails as it does for real
                    archive.write(chunk)
                if on_progress is not None:
                    on_progress(archive.size)
        return CommandResult(result.exit_status, b"", result.stderr)

    def _result(self, kind: str, command: str, *, check: bool, label: str | None) -> CommandResult:
        if self._closed:
            raise AssertionError(f"{command!r} sent through a closed session")
        if kind != "download":
            self.connect()
        self._record(kind, command)
        reply = self._fake.answer(command)
        if reply.raises is not None:
            # A real session whose link failed is dead too: its next command needs a new one.
            self._dead = isinstance(reply.raises, TransientError)
            raise reply.raises
        if check and reply.status != 0:
            raise command_failed(self.server, command, reply.status, reply.stderr, label)
        return CommandResult(reply.status, reply.stdout, reply.stderr)

    def _record(self, kind: str, command: str) -> None:
        self._fake.calls.append(Call(kind, command, self._number))
