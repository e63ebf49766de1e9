"""Which errors are retried: transient ones (and foreign ones); permanent ones never."""

from __future__ import annotations

import pytest

from tasks.core import errors
from tasks.core.errors import JobError, PermanentError, TransientError, is_retryable

#: Every class of the tree and whether it is retried; a new class must be added here.
RETRYABLE: dict[type[JobError], bool] = {
    errors.JobError: True,
    errors.PermanentError: False,
    errors.InventoryError: False,
    errors.ServerNotFound: False,
    errors.InvalidOptions: False,
    errors.MemberNotFound: False,
    errors.IdentityRequired: False,
    errors.JobVariablesRefused: False,
    errors.SSHAuthError: False,
    errors.HostKeyUnknown: False,
    errors.HostKeyMismatch: False,
    errors.RemotePathMissing: False,
    errors.RemoteCommandFailed: False,
    errors.CommandOutcomeUnknown: False,
    errors.ArchiveInvalid: False,
    errors.RestoreFailed: False,
    errors.RepositoryFull: False,
    errors.BackupInProgress: False,
    errors.TransientError: True,
    errors.SSHConnectError: True,
    errors.SSHTimeout: True,
    errors.SSHDisconnected: True,
}


def _tree(root: type[JobError]) -> set[type[JobError]]:
    found = {root}
    for sub in root.__subclasses__():
        found |= _tree(sub)
    return found


def _instance(cls: type[JobError]) -> JobError:
    if cls is errors.RemoteCommandFailed:
        return errors.RemoteCommandFailed("`false` exited 1", exit_status=1, stderr_tail="")
    return cls()


def test_the_table_covers_the_whole_tree() -> None:
    assert _tree(JobError) == set(RETRYABLE)


@pytest.mark.parametrize("cls", list(RETRYABLE), ids=lambda c: c.__name__)
def test_is_retryable(cls: type[JobError]) -> None:
    exc = _instance(cls)
    assert is_retryable(exc) is RETRYABLE[cls]
    # Exactly one of the two branches decides, except for the root.
    if cls is not JobError:
        assert isinstance(exc, PermanentError) != isinstance(exc, TransientError)


@pytest.mark.parametrize("exc", [OSError("disk full"), ValueError("x"), None])
def test_foreign_errors_and_none_are_retried(exc: BaseException | None) -> None:
    assert is_retryable(exc) is True


@pytest.mark.parametrize(
    "cls",
    # RemoteCommandFailed is always raised with its own message and exit status.
    [c for c in RETRYABLE if c is not errors.RemoteCommandFailed],
    ids=lambda c: c.__name__,
)
def test_the_docstring_is_the_default_message(cls: type[JobError]) -> None:
    assert str(cls()) == (cls.__doc__ or "").strip()
    assert str(cls("custom")) == "custom"


def test_remote_command_failed_keeps_the_exit_status() -> None:
    exc = errors.RemoteCommandFailed("tar exited 2", exit_status=2, stderr_tail="No such file")
    assert (str(exc), exc.exit_status, exc.stderr_tail) == ("tar exited 2", 2, "No such file")
