"""A full repository disk is `RepositoryFull` whichever transport wrote the archive: never the
dropped link a paramiko read would make of the write's OSError, which is retried and fills the
disk again. The archive is written into /dev/full, whose every write fails with ENOSPC.

The OpenSSH transport on a real full filesystem: tests/integration/test_faults.py.
"""

from __future__ import annotations

import errno
import os
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import paramiko
import pytest

from tasks import ssh
from tasks.atomic import HashingWriter
from tasks.core.errors import RepositoryFull, SSHDisconnected, is_retryable
from tasks.core.inventory import Server
from tasks.core.settings import SSHSettings
from tasks.fake_ssh import FakeSSH
from tasks.remote import archive_writes, repository_full

SERVER = Server.model_validate(
    {
        "id": str(uuid.uuid4()),
        "name": "web1",
        "host": "192.0.2.10",
        "username": "backup",
        "private_key_file": "/keys/web1",
    }
)


@pytest.fixture
def full_disk() -> Iterator[HashingWriter]:
    """An archive writer whose every write fails as on a full disk."""
    fd = os.open("/dev/full", os.O_WRONLY)
    try:
        yield HashingWriter(fd)
    finally:
        os.close(fd)


class Channel:
    """What `SSHSession.stream` reads of a paramiko channel: tar's output, 1 MiB at a time."""

    def __init__(self, chunks: int) -> None:
        self.chunks = chunks
        self.status_event = threading.Event()
        self.exit_status = 0
        self.closed = False

    def recv(self, size: int) -> bytes:
        if self.chunks == 0:
            self.status_event.set()
            return b""
        self.chunks -= 1
        return b"t" * size

    def recv_stderr_ready(self) -> bool:
        return False

    def close(self) -> None:
        self.closed = True


def paramiko_session(channel: Channel) -> ssh.SSHSession:
    session = ssh.SSHSession(
        SERVER, SSHSettings(client="paramiko"), paramiko.PKey(), Path("/keys/known_hosts")
    )
    session._open = lambda command: channel  # type: ignore[assignment, method-assign, return-value]
    return session


def test_the_paramiko_path_reports_a_full_disk_as_repository_full(
    full_disk: HashingWriter,
) -> None:
    channel = Channel(chunks=3)
    with pytest.raises(RepositoryFull) as raised:
        paramiko_session(channel).download(["tar", "--create", "--file=-", "srv"], full_disk)
    assert str(raised.value) == str(repository_full(0))
    assert "disk is full" in str(raised.value)
    assert not is_retryable(raised.value)
    assert channel.closed


def test_any_other_write_error_is_still_the_link_s(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Only ENOSPC and EDQUOT say the disk is full: another OSError goes on as before."""
    fd = os.open(tmp_path / "archive", os.O_WRONLY | os.O_CREAT)
    os.close(fd)  # writes into a closed descriptor: EBADF
    with pytest.raises(SSHDisconnected):
        paramiko_session(Channel(chunks=1)).download(["tar"], HashingWriter(fd))


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT])
def test_no_room_of_either_kind_is_repository_full(code: int) -> None:
    writer = HashingWriter(-1)
    writer.size = 5 << 20
    with pytest.raises(RepositoryFull, match=f"after {5 << 20} bytes"), archive_writes(writer):
        raise OSError(code, os.strerror(code))


def test_the_fake_transport_fails_the_same_way(full_disk: HashingWriter) -> None:
    fake = FakeSSH()
    fake.reply(["tar"], stdout=b"t" * 4096)
    with pytest.raises(RepositoryFull):
        fake.open(SERVER).download(["tar"], full_disk)
