"""The SSH interface without a server: one error mapping for both transports (so a failure is
retried or not whichever carried it), the job connection's reuse rules, the local checks made
before any connection, and the fake server itself.

Against a real sshd, both transports: tests/integration/test_download.py.
"""

from __future__ import annotations

import errno
import uuid
from pathlib import Path
from types import SimpleNamespace

import paramiko
import pytest

from tasks import openssh, ssh
from tasks.atomic import atomic_file
from tasks.core.errors import (
    HostKeyMismatch,
    HostKeyUnknown,
    JobError,
    RemoteCommandFailed,
    SSHAuthError,
    SSHConnectError,
    SSHDisconnected,
    SSHTimeout,
    is_retryable,
)
from tasks.core.inventory import Server
from tasks.core.settings import SSHSettings
from tasks.fake_ssh import FakeSSH
from tasks.remote import Connection, Failure, connection_error, session_for
from tasks.retry import retry_transient

SERVER = Server.model_validate(
    {
        "id": str(uuid.uuid4()),
        "name": "web1",
        "host": "192.0.2.10",
        "port": 2222,
        "username": "backup",
        "private_key_file": "/keys/web1",
        "known_hosts_file": "/keys/known_hosts",
    }
)
WHERE = "web1 (backup@192.0.2.10:2222)"

#: Each failure, the class both transports must raise for it, and whether a task retries it.
FAILURES = [
    (Failure.HOST_KEY_CHANGED, False, HostKeyMismatch, False),
    (Failure.HOST_KEY_UNKNOWN, False, HostKeyUnknown, False),
    (Failure.AUTH_REFUSED, False, SSHAuthError, False),
    (Failure.TIMED_OUT, False, SSHTimeout, True),
    (Failure.LINK, False, SSHConnectError, True),
    (Failure.LINK, True, SSHDisconnected, True),
]


def paramiko_error(failure: Failure, connected: bool) -> JobError:
    """What `tasks.ssh` raises for a paramiko or socket exception of this kind."""
    key = paramiko.RSAKey.generate(1024)
    raised: dict[Failure, Exception] = {
        Failure.HOST_KEY_CHANGED: paramiko.BadHostKeyException("h", key, key),
        Failure.HOST_KEY_UNKNOWN: ssh._UnknownHostKey("ssh-ed25519"),
        Failure.AUTH_REFUSED: paramiko.AuthenticationException("Authentication failed."),
        Failure.TIMED_OUT: TimeoutError("timed out"),
        Failure.LINK: EOFError() if connected else ConnectionRefusedError(errno.ECONNREFUSED, "no"),
    }
    with pytest.raises(JobError) as caught, ssh._translated(SERVER, connected=connected):
        raise raised[failure]
    return caught.value


#: ssh's own words (exit status 255) for each failure.
SSH_STDERR = {
    Failure.HOST_KEY_CHANGED: b"@@@@@@@@\n@ WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED! @\n"
    b"Host key for [192.0.2.10]:2222 has changed and you have requested strict checking.\n"
    b"Host key verification failed.\n",
    Failure.HOST_KEY_UNKNOWN: b"No ED25519 host key is known for [192.0.2.10]:2222 and you have "
    b"requested strict checking.\nHost key verification failed.\n",
    Failure.AUTH_REFUSED: b"backup@192.0.2.10: Permission denied (publickey).\n",
    Failure.TIMED_OUT: b"ssh: connect to host 192.0.2.10 port 2222: Connection timed out\n",
    Failure.LINK: b"ssh: connect to host 192.0.2.10 port 2222: Connection refused\n",
}


@pytest.mark.parametrize(("failure", "connected", "expected", "retryable"), FAILURES)
def test_both_transports_raise_the_same_error_for_the_same_failure(
    failure: Failure, connected: bool, expected: type[JobError], retryable: bool
) -> None:
    from_paramiko = paramiko_error(failure, connected)
    stderr = b"client_loop: send disconnect: Broken pipe\n" if connected else SSH_STDERR[failure]
    from_ssh = openssh._failure(SERVER, stderr, received=connected)

    for error in (from_paramiko, from_ssh):
        assert type(error) is expected
        assert is_retryable(error) is retryable
        assert str(error).count(WHERE) == 1, str(error)
    assert str(from_ssh) == str(
        connection_error(SERVER, failure, _last(stderr), connected=connected)
    )


def _last(stderr: bytes) -> str:
    lines = [line.strip() for line in stderr.decode().splitlines() if "@@@" not in line]
    if b"has changed" in stderr:
        return next(line for line in lines if line.startswith("Host key for"))
    if b"Host key verification failed" in stderr:
        return ""
    return lines[-1]


def test_a_host_key_message_says_how_to_add_the_key() -> None:
    error = paramiko_error(Failure.HOST_KEY_UNKNOWN, connected=False)
    assert str(error) == (
        f"host key of {WHERE} (ssh-ed25519) is not in /keys/known_hosts; "
        "add it with: ssh-keyscan -p PORT HOST >> /keys/known_hosts"
    )


def test_an_exception_that_is_not_a_transports_goes_through_unchanged() -> None:
    with pytest.raises(KeyError), ssh._translated(SERVER, connected=True):
        raise KeyError("a bug of ours")


@pytest.mark.parametrize(
    ("error", "retried"),
    [(SSHDisconnected(), True), (SSHTimeout(), True), (SSHAuthError(), False), (KeyError(), True)],
)
def test_the_retry_condition_follows_the_error_tree(error: Exception, retried: bool) -> None:
    state = SimpleNamespace(result=lambda raise_on_failure: error)
    assert retry_transient(None, None, state) is retried


# --- checks made once, before any connection --------------------------------------------------


def test_a_missing_key_file_fails_before_connecting(tmp_path: Path) -> None:
    server = SERVER.model_copy(update={"private_key_file": tmp_path / "absent"})
    with pytest.raises(SSHAuthError, match="not found"):
        ssh.open_session(server, SSHSettings())


def test_a_missing_known_hosts_file_fails_before_connecting(tmp_path: Path) -> None:
    key = tmp_path / "id_rsa"
    paramiko.RSAKey.generate(1024).write_private_key_file(str(key))
    server = SERVER.model_copy(
        update={"private_key_file": key, "known_hosts_file": tmp_path / "absent"}
    )
    with pytest.raises(HostKeyUnknown, match="host keys are always checked"):
        ssh.open_session(server, SSHSettings())


def test_the_ssh_binary_checks_host_keys_and_keys_as_paramiko_does() -> None:
    argv = openssh.argv(SERVER, SSHSettings(), "tar --create -- 'a b'")
    options = dict(argv[i + 1].split("=", 1) for i, a in enumerate(argv) if a == "-o")
    assert options["StrictHostKeyChecking"] == "yes"
    assert options["UserKnownHostsFile"] == '"/keys/known_hosts"'
    assert options["GlobalKnownHostsFile"] == "/dev/null"
    assert options["IdentityFile"] == '"/keys/web1"' and options["IdentitiesOnly"] == "yes"
    assert options["BatchMode"] == "yes" and options["PasswordAuthentication"] == "no"
    assert argv[1:3] == ["-F", "/dev/null"]
    assert argv[-3:] == ["--", "192.0.2.10", "tar --create -- 'a b'"]


# --- the job's connection ---------------------------------------------------------------------


def test_a_job_connection_is_opened_at_first_use_and_reused() -> None:
    fake = FakeSSH()
    fake.reply(["true"])
    with Connection(SERVER, fake.open) as connection:
        assert fake.sessions == 0
        for _ in range(3):
            with connection.session() as session:
                session.run(["true"])
    assert fake.sessions == 1 and fake.connections == 1
    assert [call.kind for call in fake.calls] == ["connect", "run", "run", "run", "close"]


def test_a_permanent_failure_keeps_the_connection_a_transient_one_drops_it() -> None:
    fake = FakeSSH()
    fake.reply(["false"], status=1)
    fake.reply(["true"])
    connection = Connection(SERVER, fake.open)
    with pytest.raises(RemoteCommandFailed), connection.session() as session:
        session.run(["false"])
    with connection.session() as session:
        session.run(["true"])
    assert fake.sessions == 1
    # Raised by the task, the session still looking alive: a half-read channel is no use.
    with pytest.raises(SSHTimeout), connection.session() as session:
        raise SSHTimeout("no data for 120 s")
    assert [c.session for c in fake.calls if c.kind == "close"] == [1]
    with connection.session() as session:
        session.run(["true"])
    assert fake.sessions == 2


def test_a_session_whose_link_died_is_replaced() -> None:
    fake = FakeSSH()
    fake.reply(["tar"], raises=SSHDisconnected("dropped"), times=1)
    fake.reply(["true"])
    connection = Connection(SERVER, fake.open)
    with pytest.raises(SSHDisconnected), connection.session() as session:
        session.run(["tar"])
    with connection.session() as session:
        session.run(["true"])
    assert [(c.kind, c.session) for c in fake.calls if c.command] == [("run", 1), ("run", 2)]


def test_a_connection_unused_past_the_reuse_limit_is_replaced(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from tasks import remote

    fake = FakeSSH()
    fake.reply(["true"])
    connection = Connection(SERVER, fake.open)
    with connection.session() as session:
        session.run(["true"])
    monkeypatch.setattr(remote, "REUSE_IDLE", -1.0)
    with connection.session() as session:
        session.run(["true"])
    assert fake.sessions == 2


def test_a_task_without_the_jobs_connection_opens_and_closes_its_own() -> None:
    fake = FakeSSH()
    fake.reply(["true"])
    with session_for(SERVER, None, fake.open) as session:
        session.run(["true"])
    assert [call.kind for call in fake.calls] == ["connect", "run", "close"]


# --- the fake itself --------------------------------------------------------------------------


def test_the_fake_matches_commands_as_quoted_and_refuses_unscripted_ones() -> None:
    fake = FakeSSH()
    fake.reply(["ls", "a b"], stdout=b"x\n", times=1)
    session = fake.open(SERVER)
    assert session.run(["ls", "a b"]).text == "x\n"
    assert fake.commands == ["ls 'a b'"]
    with pytest.raises(AssertionError, match="no answer scripted"):
        session.run(["ls", "a b"])  # its one answer is used up


def test_the_fake_downloads_into_the_archive_with_progress(tmp_path: Path) -> None:
    fake = FakeSSH()
    fake.reply(["cat", "f"], stdout=b"0123456789")
    seen: list[int] = []
    with atomic_file(tmp_path / "out") as archive:
        result = fake.open(SERVER).download(["cat", "f"], archive, on_progress=seen.append)
    assert result.exit_status == 0
    assert (tmp_path / "out").read_bytes() == b"0123456789"
    assert seen == [5, 10]
