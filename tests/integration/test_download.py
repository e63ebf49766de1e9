"""`tasks.ssh.download`: the system OpenSSH client and paramiko make the same archive and fail
with the same errors, against a real sshd (no Prefect here).

Each test runs with both clients (`ssh_client="auto"` takes the OpenSSH path for these keys,
which the first test checks), so a difference between the two paths breaks the build.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import uuid
from pathlib import Path
from typing import Literal

import pytest

from deployments.system.local_target import LocalTarget, descendants, free_port, keygen
from tasks import openssh
from tasks.atomic import atomic_file
from tasks.backup import tar_command
from tasks.core.errors import (
    HostKeyMismatch,
    HostKeyUnknown,
    JobError,
    SSHAuthError,
    SSHConnectError,
    SSHDisconnected,
    SSHTimeout,
    TransientError,
)
from tasks.core.inventory import Server
from tasks.core.settings import SSHSettings
from tasks.ssh import CommandResult, download
from tests.support.proxy import FaultyProxy
from tests.support.trees import make_tree

Client = Literal["auto", "paramiko"]
CLIENTS: list[Client] = ["auto", "paramiko"]


def _server(target: LocalTarget, **fields: object) -> Server:
    return Server.model_validate(target.server_entry(str(uuid.uuid4()), "dl", **fields))


def _download(
    server: Server, argv: list[str], out: Path, client: Client, idle_timeout: float = 120.0
) -> tuple[CommandResult, int, str, list[int]]:
    """Download into `out`; returns the result, size and sha256 the writer counted, progress."""
    seen: list[int] = []
    with atomic_file(out) as archive:
        result = download(
            server,
            argv,
            archive,
            on_progress=seen.append,
            settings=SSHSettings(client=client, idle_timeout=idle_timeout),
        )
    return result, archive.size, archive.sha256, seen


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_both_clients_write_the_same_archive_with_its_size_and_hash(
    target: LocalTarget, tmp_path: Path
) -> None:
    source = make_tree(tmp_path / "source", big_bytes=20_000_000)
    server = _server(target)
    assert openssh.unusable(server) is None  # so "auto" below is the OpenSSH path
    digests = set()
    for client in CLIENTS:
        out = tmp_path / f"{client}.tar"
        result, size, sha256, seen = _download(
            server, tar_command([str(source)], "none"), out, client
        )
        assert result.exit_status == 0, result.stderr_tail()
        assert size == out.stat().st_size > 20_000_000
        assert sha256 == _sha256(out)
        assert seen and seen[-1] == size and seen == sorted(seen)
        digests.add(sha256)
    assert len(digests) == 1


@pytest.mark.parametrize("client", CLIENTS)
def test_a_hostile_path_is_one_argument_and_the_exit_status_comes_back(
    target: LocalTarget, tmp_path: Path, client: Client
) -> None:
    witness = tmp_path / "executed"
    hostile = tmp_path / f"a b;$(touch {witness})`touch {witness}`'\"%h"
    hostile.mkdir(parents=True)
    (hostile / "f.txt").write_text("data\n")
    missing = tmp_path / "not here"
    server = _server(target)

    result, _, _, _ = _download(
        server, tar_command([str(hostile), str(missing)], "none"), tmp_path / "a.tar", client
    )

    assert result.exit_status == 2  # GNU tar: a path it could not read
    assert "not here" in result.stderr_tail()
    assert not witness.exists()


@pytest.mark.parametrize("client", CLIENTS)
@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("changed host key", HostKeyMismatch),
        ("unknown host key", HostKeyUnknown),
        ("key not authorized", SSHAuthError),
        ("nobody listening", SSHConnectError),
    ],
)
def test_connection_failures_are_the_same_errors(
    target: LocalTarget, tmp_path: Path, client: Client, case: str, expected: type[JobError]
) -> None:
    fields: dict[str, object] = {}
    if case == "changed host key":
        keygen(tmp_path / "other_host")
        pub = " ".join((tmp_path / "other_host.pub").read_text().split()[:2])
        (tmp_path / "known_hosts").write_text(f"[127.0.0.1]:{target.port} {pub}\n")
        fields["known_hosts_file"] = str(tmp_path / "known_hosts")
    elif case == "unknown host key":
        (tmp_path / "known_hosts").write_text("")
        fields["known_hosts_file"] = str(tmp_path / "known_hosts")
    elif case == "key not authorized":
        keygen(tmp_path / "stranger")
        fields["private_key_file"] = str(tmp_path / "stranger")
    else:
        fields["port"] = free_port()
    server = _server(target, **fields)

    with pytest.raises(expected) as raised:
        _download(server, ["true"], tmp_path / "a.tar", client)

    if expected is SSHConnectError:
        assert "cannot connect" in str(raised.value)
    assert not list(tmp_path.glob("*.tar")) and not list(tmp_path.glob(".*.partial"))


@pytest.mark.parametrize("client", CLIENTS)
def test_a_silent_server_times_out_and_leaves_no_ssh_behind(
    target: LocalTarget, tmp_path: Path, client: Client
) -> None:
    server = _server(target)

    with pytest.raises(SSHTimeout):
        _download(server, ["sleep", "20"], tmp_path / "a.tar", client, idle_timeout=1.0)

    leftovers = [pid for pid in descendants(os.getpid()) if _name(pid) == "ssh"]
    assert leftovers == []


@pytest.mark.parametrize("client", CLIENTS)
def test_sshd_killed_mid_stream_is_a_transient_dropped_connection(
    tmp_path: Path, client: Client
) -> None:
    victim = LocalTarget(home=tmp_path / "victim").start()
    proxy = FaultyProxy(victim.port, bytes_per_second=2_000_000).start()
    try:
        (tmp_path / "known_hosts").write_text(victim.known_hosts_line(proxy.port))
        server = _server(victim, port=proxy.port, known_hosts_file=str(tmp_path / "known_hosts"))
        source = tmp_path / "source"
        source.mkdir()
        (source / "big.bin").write_bytes(os.urandom(8_000_000))

        def kill_after_a_while(size: int) -> None:
            if size >= 1_000_000:
                victim.kill()

        with pytest.raises(SSHDisconnected) as raised, atomic_file(tmp_path / "a.tar") as out:
            download(
                server,
                tar_command([str(source)], "none"),
                out,
                on_progress=kill_after_a_while,
                settings=SSHSettings(client=client),
            )
        assert isinstance(raised.value, TransientError)
        assert not (tmp_path / "a.tar").exists()
    finally:
        proxy.close()
        victim.kill()


def test_a_key_that_ssh_would_refuse_falls_back_to_paramiko(
    target: LocalTarget, tmp_path: Path
) -> None:
    loose = tmp_path / "loose key"
    shutil.copyfile(target.user_key, loose)
    loose.chmod(0o644)
    server = _server(target, private_key_file=str(loose))
    assert "mode 644" in (openssh.unusable(server) or "")

    result, size, sha256, _ = _download(server, ["echo", "hi"], tmp_path / "a.txt", "auto")

    assert result.exit_status == 0
    assert (tmp_path / "a.txt").read_bytes() == b"hi\n"
    assert (size, sha256) == (3, hashlib.sha256(b"hi\n").hexdigest())


def test_paths_with_spaces_and_percent_signs_reach_ssh_as_they_are(
    target: LocalTarget, tmp_path: Path
) -> None:
    odd = tmp_path / "a b %h %%"
    odd.mkdir()
    shutil.copyfile(target.user_key, odd / "id key")
    (odd / "id key").chmod(0o600)
    shutil.copyfile(target.known_hosts, odd / "known hosts")
    server = _server(
        target, private_key_file=str(odd / "id key"), known_hosts_file=str(odd / "known hosts")
    )
    assert openssh.unusable(server) is None

    result, _, _, _ = _download(server, ["echo", "hi"], tmp_path / "a.txt", "auto")

    assert result.exit_status == 0
    assert (tmp_path / "a.txt").read_bytes() == b"hi\n"


def _name(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""
