"""A backup's plan: the codec (one the server has and this host can read back to verify it), and
backup paths that are symbolic links (followed to a directory, refused otherwise), with the plan
script and tar run by this machine's own shell instead of over SSH.

Over a real sshd: tests/integration/test_backup_paths.py.
"""

from __future__ import annotations

import gzip
import io
import subprocess
import tarfile
import uuid
from pathlib import Path

import pytest

import tasks.repository
from flows.backup import backup
from tasks.backup import (
    FOLLOW_TRANSFORMS,
    choose_compression,
    parse_plan,
    plan_backup,
    plan_command,
    tar_command,
)
from tasks.core.errors import InvalidOptions, RemotePathMissing, is_retryable
from tasks.core.inventory import Server
from tasks.core.jobs import BackupOptions
from tasks.remote import Connection
from tasks.repository import BackupRepository, BackupStatus, readable_codecs
from tests.support.offline import Offline, offline

__all__ = ["offline"]

SERVER = Server.model_validate(
    {
        "id": str(uuid.uuid4()),
        "name": "web1",
        "host": "192.0.2.10",
        "username": "backup",
        "private_key_file": "/keys/web1",
    }
)


def installed_here(monkeypatch: pytest.MonkeyPatch, *programs: str) -> None:
    """This host has only these of gzip and zstd."""
    monkeypatch.setattr(
        tasks.repository.shutil,
        "which",
        lambda name: f"/usr/bin/{name}" if name in programs else None,
    )


# --- the codec --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("asked", "on_server", "here", "chosen"),
    [
        (True, {"zstd", "gzip"}, ("zstd", "gzip"), "zstd"),
        (True, {"zstd", "gzip"}, ("gzip",), "gzip"),
        (True, {"zstd"}, ("gzip",), "none"),
        (True, {"zstd", "gzip"}, (), "none"),
        (True, set(), ("zstd", "gzip"), "none"),
        ("zstd", {"zstd", "gzip"}, ("gzip",), "gzip"),
        ("zstd", {"zstd"}, ("gzip",), "none"),
        ("zstd", {"zstd"}, ("zstd",), "zstd"),
        ("gzip", {"gzip", "zstd"}, ("gzip", "zstd"), "gzip"),
        ("gzip", {"gzip"}, (), "none"),
        ("none", {"gzip", "zstd"}, ("gzip", "zstd"), "none"),
    ],
)
def test_the_codec_is_one_this_host_can_read_back(
    monkeypatch: pytest.MonkeyPatch,
    asked: bool | str,
    on_server: set[str],
    here: tuple[str, ...],
    chosen: str,
) -> None:
    installed_here(monkeypatch, *here)
    options = BackupOptions(compression=asked)  # type: ignore[arg-type]
    assert choose_compression(options, on_server, SERVER, readable_codecs()) == chosen


def test_a_codec_the_server_lacks_is_refused_even_when_readable_here(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    installed_here(monkeypatch, "gzip", "zstd")
    with pytest.raises(InvalidOptions, match="zstd is not installed on the server"):
        choose_compression(BackupOptions(compression="zstd"), {"gzip"}, SERVER, readable_codecs())


def test_zstd_without_zstd_here_is_backed_up_as_gzip_and_says_so_in_the_manifest(
    offline: Offline, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not a full-size zstd archive that fails its verification at the end: gzip from the
    start, written in the manifest, and the archive verifies."""
    installed_here(monkeypatch, "gzip")
    paths = ["/srv"]
    server = offline.add_server(backup={"paths": paths})
    plain = io.BytesIO()
    with tarfile.open(fileobj=plain, mode="w") as archive:
        info = tarfile.TarInfo("srv/a.txt")
        info.size = 3
        archive.addfile(info, io.BytesIO(b"abc"))
    offline.fake.reply(plan_command(paths), stdout=b"codec\tzstd\ncodec\tgzip\nestimate\t1\t3\n")
    offline.fake.reply(tar_command(paths, "gzip"), stdout=gzip.compress(plain.getvalue()))
    backup_id = uuid.uuid4()

    result = backup.fn(
        server_id=server.id, backup_id=backup_id, options=BackupOptions(compression="zstd")
    )

    assert result["status"] == "completed"
    repo = BackupRepository(offline.tmp_path / "backups")
    manifest = repo.read(server.id, backup_id)
    assert manifest is not None and manifest.status is BackupStatus.COMPLETED
    assert manifest.compression == "gzip"
    assert manifest.archive == f"{backup_id}.tar.gz"
    assert repo.verify(manifest).file_count == 1


# --- symbolic links ---------------------------------------------------------------------------


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """`data/` with two files, and in `srv/` links to it (absolute and relative), to one of its
    files, and to nothing."""
    data = tmp_path / "data"
    (data / "sub").mkdir(parents=True)
    (data / "a.txt").write_text("a")
    (data / "sub" / "b.txt").write_text("b")
    srv = tmp_path / "srv"
    srv.mkdir()
    (srv / "link").symlink_to(data)
    (srv / "relative").symlink_to(Path("..") / "data")
    (srv / "file").symlink_to(data / "a.txt")
    (srv / "dangling").symlink_to(tmp_path / "nothing")
    return tmp_path


def plan_here(paths: list[str]) -> subprocess.CompletedProcess[bytes]:
    """The plan script, run by this machine's shell as sshd would run it."""
    return subprocess.run(plan_command(paths), capture_output=True, check=False)


def members(paths: list[str], followed: list[str]) -> dict[str, str]:
    """What this machine's tar stores for `tar_command`: member name -> kind."""
    made = subprocess.run(tar_command(paths, "none", followed), capture_output=True, check=True)
    with tarfile.open(fileobj=io.BytesIO(made.stdout)) as archive:
        return {
            m.name: "dir" if m.isdir() else "link" if m.issym() else "file"
            for m in archive.getmembers()
        }


def test_a_link_to_a_directory_is_followed(tree: Path) -> None:
    link, relative = str(tree / "srv" / "link"), str(tree / "srv" / "relative") + "/"
    ran = plan_here([link, relative])
    assert ran.returncode == 0, ran.stderr
    answer = parse_plan(ran.stdout.decode())
    assert answer.linked == [link, relative.rstrip("/")]
    assert answer.files == 4  # the estimate looks through the links too

    stored = members([link, relative], [link, relative])

    root = str(tree).lstrip("/")
    for name in ("link", "relative"):
        assert stored[f"{root}/srv/{name}"] == "dir"  # the directory, not the link
        assert stored[f"{root}/srv/{name}/a.txt"] == "file"
        assert stored[f"{root}/srv/{name}/sub/b.txt"] == "file"
    assert not [name for name in stored if "/./" in name or name.endswith("/.")]


def test_without_following_tar_would_store_the_link_alone(tree: Path) -> None:
    link = str(tree / "srv" / "link")
    assert members([link], []) == {f"{str(tree).lstrip('/')}/srv/link": "link"}


def test_the_plan_says_which_paths_tar_follows(offline: Offline, tree: Path) -> None:
    link, plain = str(tree / "srv" / "link"), str(tree / "data")
    server = offline.add_server(backup={"paths": [link + "/", plain]})
    offline.fake.reply(plan_command([link, plain]), stdout=plan_here([link, plain]).stdout)
    plan = plan_backup.fn(server, BackupOptions(), Connection(server, offline.fake.open))
    assert plan.followed == (link + "/",)
    argv = tar_command([link + "/", plain], "none", plan.followed)
    assert argv[-3:] == ["--", link.lstrip("/") + "/.", plain.lstrip("/")]
    assert set(FOLLOW_TRANSFORMS) <= set(argv)


@pytest.mark.parametrize(
    ("name", "target"), [("file", "data/a.txt"), ("dangling", "nothing")], ids=["file", "nothing"]
)
def test_a_link_to_anything_but_a_directory_is_refused_naming_it(
    offline: Offline, tree: Path, name: str, target: str
) -> None:
    path = str(tree / "srv" / name)
    server = offline.add_server(backup={"paths": [path]})
    ran = plan_here([path])
    assert ran.returncode == 3
    offline.fake.reply(plan_command([path]), status=3, stdout=ran.stdout)

    with pytest.raises(InvalidOptions) as raised:
        plan_backup.fn(server, BackupOptions(), Connection(server, offline.fake.open))

    assert f"{path} is a symbolic link to {tree / target}, which is not a directory" in str(
        raised.value
    )
    assert not is_retryable(raised.value)


def test_a_missing_path_is_still_missing(offline: Offline, tree: Path) -> None:
    path = str(tree / "srv" / "absent")
    server = offline.add_server(backup={"paths": [path]})
    offline.fake.reply(plan_command([path]), status=3, stdout=plan_here([path]).stdout)
    with pytest.raises(RemotePathMissing, match="not found"):
        plan_backup.fn(server, BackupOptions(), Connection(server, offline.fake.open))
