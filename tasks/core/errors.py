"""The errors of the work layer, and which of them are worth a retry.

    JobError
    ├── PermanentError            fail at once: retrying cannot help
    │   ├── InventoryError        the inventory file is missing or invalid
    │   ├── ServerNotFound        no server with that id in the inventory
    │   ├── InvalidOptions        the job's options cannot be honoured
    │   │   ├── MemberNotFound    a path asked for is not in the backup's archive
    │   │   └── IdentityRequired  reading an encrypted archive's contents needs its identity
    │   ├── JobVariablesRefused   the run carries job variables, which would choose what runs
    │   ├── SSHAuthError          the server refused our key
    │   ├── HostKeyUnknown        the server's key is not in the known-hosts file
    │   ├── HostKeyMismatch       the server's key differs from the known one
    │   ├── RemotePathMissing     a path to back up does not exist on the server
    │   ├── RemoteCommandFailed   a remote command exited non-zero
    │   ├── CommandOutcomeUnknown a command that changes the server started, its end unseen
    │   ├── ArchiveInvalid        an archive does not match its manifest
    │   ├── RestoreFailed         a restore stopped part way; says what it left behind
    │   ├── RepositoryFull        the backup repository's disk filled up
    │   └── BackupInProgress      another run is writing the same backup id now
    └── TransientError            retried with backoff: the next try may work
        ├── SSHConnectError       refused, unreachable, or dropped during the handshake
        ├── SSHTimeout            connect or read timed out (a hung target)
        └── SSHDisconnected       the channel dropped in the middle of the work

Each class's docstring is its message when raised without arguments. A connection's failures
come into this tree in one place, `tasks.remote.connection_error`, whichever transport saw them
(paramiko's exceptions in `tasks.ssh`, the system ssh client's exit status 255 and message in
`tasks.openssh`).

The message of an error about an operator's command (a backup hook, an update) names the step
and the exit status only: it becomes the run's state message and its logs, which users of the
API read. The command text and its output go into `detail`, which `tasks.outcome` publishes for
admins only.
"""

from __future__ import annotations


class JobError(Exception):
    """A job failed."""

    def __init__(self, message: str | None = None, *, detail: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or type(self).__name__).strip())
        #: The message with what only admins may see (command text, output); None: no more.
        self.detail = detail


class PermanentError(JobError):
    """The job cannot succeed as asked; it is not retried."""


class TransientError(JobError):
    """The job may succeed on a later try."""


class InventoryError(PermanentError):
    """The server inventory is missing or invalid."""


class ServerNotFound(PermanentError):
    """No server with that id is in the inventory."""


class InvalidOptions(PermanentError):
    """The job's options cannot be honoured."""


class MemberNotFound(InvalidOptions):
    """A path asked for is not in the backup's archive."""


class IdentityRequired(InvalidOptions):
    """The archive is encrypted: reading its contents needs its age identity."""


class JobVariablesRefused(PermanentError):
    """The run carries job variables, which would choose what the worker runs; none is accepted."""


class SSHAuthError(PermanentError):
    """The server refused our key."""


class HostKeyUnknown(PermanentError):
    """The server's host key is not in the known-hosts file."""


class HostKeyMismatch(PermanentError):
    """The server's host key differs from the one in the known-hosts file."""


class CommandOutcomeUnknown(PermanentError):
    """A command that changes the server started and its end was not seen: it may still be
    running there, so it is not run again."""


class RemotePathMissing(PermanentError):
    """A path to back up does not exist on the server."""


class RemoteCommandFailed(PermanentError):
    """A remote command exited with a non-zero status."""

    def __init__(
        self,
        message: str,
        exit_status: int,
        stderr_tail: str = "",
        *,
        detail: str | None = None,
    ) -> None:
        super().__init__(message, detail=detail)
        self.exit_status = exit_status
        self.stderr_tail = stderr_tail


class ArchiveInvalid(PermanentError):
    """The archive does not match its manifest."""


class RestoreFailed(PermanentError):
    """A restore stopped before its end; the message says what it left in the destination."""

    def __init__(self, message: str | None = None, *, written: list[str] | None = None) -> None:
        super().__init__(message)
        #: The members it wrote before it stopped, as they are named under the destination.
        self.written = written or []


class RepositoryFull(PermanentError):
    """The backup repository's disk is full.

    Not retried: each try would fill the disk again, failing the other backups that write to
    it meanwhile, and nothing frees room within the retries' 35 s.
    """


class BackupInProgress(PermanentError):
    """Another run is writing this backup id now; this one leaves it alone."""


class SSHConnectError(TransientError):
    """The server could not be reached."""


class SSHTimeout(TransientError):
    """The server stopped answering."""


class SSHDisconnected(TransientError):
    """The connection to the server dropped."""


def is_retryable(exc: BaseException | None) -> bool:
    """Whether a task that raised `exc` should go on to its retry policy."""
    return not isinstance(exc, PermanentError)
