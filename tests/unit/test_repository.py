"""The backup repository on local disk, with the real `tar`: write, verify, restore, refuse."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path
from uuid import UUID, uuid4

import pytest

from tasks.archive_files import restore
from tasks.atomic import atomic_file, write_atomic
from tasks.core.errors import ArchiveInvalid, BackupInProgress, InvalidOptions
from tasks.repository import CODECS, BackupRepository, BackupStatus, Compression, Manifest

STARTED = datetime(2026, 11, 29, 3, 0, tzinfo=UTC)


def make_tree(root: Path) -> dict[str, str]:
    """A small tree of text, binary, empty and nested files; returns its hashes."""
    (root / "etc" / "app").mkdir(parents=True)
    (root / "data" / "deep" / "er").mkdir(parents=True)
    (root / "empty-dir").mkdir()
    (root / "etc" / "app" / "config.yaml").write_text("port: 8080\nname: späti\n")
    (root / "data" / "blob.bin").write_bytes(os.urandom(200_000))
    (root / "data" / "deep" / "er" / "zeros").write_bytes(b"\0" * 70_000)
    (root / "data" / "empty").write_bytes(b"")
    (root / "file with spaces.txt").write_text("x" * 10)
    os.symlink("etc/app/config.yaml", root / "config-link")
    return tree_hashes(root)


def tree_hashes(root: Path) -> dict[str, str]:
    """Relative path -> sha256 of every regular file, symlinks as their target."""
    hashes: dict[str, str] = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        if path.is_symlink():
            hashes[rel] = f"-> {os.readlink(path)}"
        elif path.is_file():
            hashes[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
        else:
            hashes[rel] = "dir"
    return hashes


def regular_files(hashes: dict[str, str]) -> int:
    return sum(1 for v in hashes.values() if v != "dir" and not v.startswith("-> "))


def new_manifest(compression: Compression = "none") -> Manifest:
    backup_id = uuid4()
    return Manifest(
        backup_id=backup_id,
        server_id=uuid4(),
        server_name="web1",
        user_id="cli:tester",
        job_id=uuid4(),
        job_type="backup:manual",
        compression=compression,
        paths=["/srv"],
        archive=BackupRepository.archive_name(backup_id, compression),
        started_at=STARTED,
    )


def archive_tree(repo: BackupRepository, manifest: Manifest, source: Path) -> Manifest:
    """Stream `tar -c` of `source` into the repository, as a backup's transfer does."""
    flags = CODECS[manifest.compression][1]
    with repo.open_archive(manifest) as out:
        with subprocess.Popen(
            ["tar", "--create", "--file", "-", *flags, "--directory", str(source), "."],
            stdout=subprocess.PIPE,
        ) as tar:
            assert tar.stdout is not None
            while chunk := tar.stdout.read(64 << 10):
                out.write(chunk)
        assert tar.returncode == 0
    done = manifest.model_copy(
        update={
            "size": out.size,
            "sha256": out.sha256,
            "finished_at": STARTED + timedelta(minutes=1),
            "status": BackupStatus.COMPLETED,
        }
    )
    repo.save(done)
    return done


@pytest.fixture
def repo(tmp_path: Path) -> BackupRepository:
    return BackupRepository(tmp_path / "repo")


@pytest.fixture
def source(tmp_path: Path) -> Path:
    path = tmp_path / "source"
    path.mkdir()
    make_tree(path)
    return path


# --- atomic_file -----------------------------------------------------------------------------


def test_atomic_file_writes_and_hashes(tmp_path: Path) -> None:
    target = tmp_path / "out" / "file.bin"
    with atomic_file(target) as out:
        out.write(b"hello ")
        out.write(b"world")
    assert target.read_bytes() == b"hello world"
    assert out.size == 11
    assert out.sha256 == hashlib.sha256(b"hello world").hexdigest()
    assert target.stat().st_mode & 0o777 == 0o600
    assert sorted(p.name for p in target.parent.iterdir()) == ["file.bin"]


def test_a_failure_inside_atomic_file_leaves_no_file_and_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "file.bin"
    with pytest.raises(RuntimeError, match="transfer broke"):
        with atomic_file(target) as out:
            out.write(b"half an archive")
            assert len(list(tmp_path.iterdir())) == 1  # the temp file exists meanwhile
            raise RuntimeError("transfer broke")
    assert list(tmp_path.iterdir()) == []


def test_a_failure_keeps_the_previous_file(tmp_path: Path) -> None:
    target = tmp_path / "manifest.json"
    write_atomic(target, b"old")
    with pytest.raises(KeyboardInterrupt):
        with atomic_file(target) as out:
            out.write(b"new but unfinished")
            raise KeyboardInterrupt
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["manifest.json"]


def test_a_failed_tar_inside_open_archive_leaves_nothing(
    repo: BackupRepository, tmp_path: Path
) -> None:
    manifest = new_manifest()
    with pytest.raises(subprocess.CalledProcessError):
        with repo.open_archive(manifest) as out:
            result = subprocess.run(
                ["tar", "--create", "--file", "-", str(tmp_path / "missing")],
                capture_output=True,
                check=False,
            )
            out.write(result.stdout)
            result.check_returncode()
    assert list(repo.server_dir(manifest.server_id).iterdir()) == []


def test_open_archive_removes_partials_of_an_earlier_attempt(repo: BackupRepository) -> None:
    manifest = new_manifest()
    directory = repo.server_dir(manifest.server_id)
    directory.mkdir(parents=True)
    stale = directory / f".{manifest.backup_id}.abc123.partial"
    stale.write_bytes(b"left by a crash")
    other = directory / f".{uuid4()}.abc123.partial"  # another backup's, maybe still running
    other.write_bytes(b"")
    with repo.open_archive(manifest) as out:
        out.write(b"x")
    assert not stale.exists()
    assert other.exists()


def test_a_second_writer_of_the_same_backup_id_is_refused_and_the_first_goes_on(
    repo: BackupRepository,
) -> None:
    manifest = new_manifest()
    with repo.open_archive(manifest) as first:
        first.write(b"first")
        with pytest.raises(BackupInProgress, match="another run is writing it now"):
            with repo.open_archive(manifest):
                pass
        first.write(b" and more")
    assert repo.archive_path(manifest).read_bytes() == b"first and more"
    # No lock file is left beside the archive once its writer is done.
    assert not list(repo.server_dir(manifest.server_id).glob("*.lock"))


# --- manifests -------------------------------------------------------------------------------


def test_manifest_round_trips_with_camel_case_keys(repo: BackupRepository) -> None:
    manifest = new_manifest("gzip").model_copy(update={"size": 123, "file_count": 4})
    repo.save(manifest)

    path = repo.manifest_path(manifest.server_id, manifest.backup_id)
    raw = json.loads(path.read_text())
    assert {
        "backupId",
        "serverId",
        "serverName",
        "userId",
        "jobId",
        "jobType",
        "fileCount",
        "startedAt",
        "finishedAt",
    } <= set(raw)
    assert not [key for key in raw if "_" in key]
    assert raw["backupId"] == str(manifest.backup_id)
    assert raw["status"] == "running"
    assert raw["compression"] == "gzip"
    assert raw["archive"] == f"{manifest.backup_id}.tar.gz"

    assert repo.read(manifest.server_id, manifest.backup_id) == manifest
    assert repo.find(str(manifest.backup_id)) == manifest
    assert repo.read(manifest.server_id, uuid4()) is None


def test_list_is_oldest_first(repo: BackupRepository) -> None:
    server_id = uuid4()
    manifests = [
        new_manifest().model_copy(
            update={"server_id": server_id, "started_at": STARTED + timedelta(hours=h)}
        )
        for h in (3, 1, 2)
    ]
    for manifest in manifests:
        repo.save(manifest)
    assert [m.started_at.hour for m in repo.list(server_id)] == [4, 5, 6]
    assert repo.list(uuid4()) == []


# --- verify and restore ----------------------------------------------------------------------


@pytest.mark.parametrize("compression", list(CODECS))
def test_verify_counts_files_and_checks_the_hash(
    repo: BackupRepository, source: Path, compression: Compression
) -> None:
    manifest = archive_tree(repo, new_manifest(compression), source)
    archive = repo.archive_path(manifest)
    assert archive.name.endswith(CODECS[compression][0])

    result = repo.verify(manifest)

    assert result.backup_id == manifest.backup_id
    assert result.file_count == regular_files(tree_hashes(source)) == 5
    assert result.size == archive.stat().st_size == manifest.size
    assert result.sha256 == hashlib.sha256(archive.read_bytes()).hexdigest() == manifest.sha256


@pytest.mark.parametrize("compression", list(CODECS))
def test_verify_catches_a_flipped_byte(
    repo: BackupRepository, source: Path, compression: Compression
) -> None:
    manifest = archive_tree(repo, new_manifest(compression), source)
    archive = repo.archive_path(manifest)
    data = bytearray(archive.read_bytes())
    data[len(data) // 2] ^= 0x01
    archive.write_bytes(bytes(data))

    with pytest.raises(ArchiveInvalid, match=r"sha256 [0-9a-f]{64} does not match"):
        repo.verify(manifest)


def test_verify_catches_a_truncated_archive_without_a_hash(
    repo: BackupRepository, source: Path
) -> None:
    manifest = archive_tree(repo, new_manifest("gzip"), source)
    archive = repo.archive_path(manifest)
    archive.write_bytes(archive.read_bytes()[:-100])
    unhashed = manifest.model_copy(update={"sha256": None, "size": None})

    with pytest.raises(ArchiveInvalid, match=r"gzip stream is damaged|not a whole tar archive"):
        repo.verify(unhashed)
    with pytest.raises(ArchiveInvalid, match="bytes, the manifest says"):
        repo.verify(manifest.model_copy(update={"sha256": None}))


def test_verify_of_a_missing_archive(repo: BackupRepository) -> None:
    manifest = new_manifest()
    with pytest.raises(ArchiveInvalid, match="is missing"):
        repo.verify(manifest)


@pytest.mark.parametrize("compression", list(CODECS))
def test_restore_reproduces_the_tree(
    repo: BackupRepository, source: Path, tmp_path: Path, compression: Compression
) -> None:
    manifest = archive_tree(repo, new_manifest(compression), source)
    destination = tmp_path / "restored"

    assert restore(repo, manifest, destination).destination == destination

    assert tree_hashes(destination) == tree_hashes(source)


def test_restore_refuses_a_non_empty_destination(
    repo: BackupRepository, source: Path, tmp_path: Path
) -> None:
    manifest = archive_tree(repo, new_manifest(), source)
    destination = tmp_path / "restored"
    destination.mkdir()
    (destination / "data").mkdir()
    (destination / "data" / "empty").write_text("precious")
    (destination / "keep.txt").write_text("mine")

    with pytest.raises(InvalidOptions, match="not empty"):
        restore(repo, manifest, destination)
    assert (destination / "data" / "empty").read_text() == "precious"
    assert sorted(p.name for p in destination.iterdir()) == ["data", "keep.txt"]

    restore(repo, manifest, destination, overwrite=True)
    restored = tree_hashes(destination)
    assert restored.pop("keep.txt") == hashlib.sha256(b"mine").hexdigest()
    assert restored == tree_hashes(source)


def test_restore_verifies_first(repo: BackupRepository, source: Path, tmp_path: Path) -> None:
    manifest = archive_tree(repo, new_manifest(), source)
    archive = repo.archive_path(manifest)
    archive.write_bytes(archive.read_bytes()[:-1] + b"!")
    destination = tmp_path / "restored"

    with pytest.raises(ArchiveInvalid):
        restore(repo, manifest, destination)
    assert not destination.exists() or list(destination.iterdir()) == []


# --- ids -------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", ["../x", "..", "/etc/passwd", "", "*", "x/../../y"])
def test_ids_that_are_not_uuids_are_rejected(repo: BackupRepository, bad: str) -> None:
    with pytest.raises(InvalidOptions, match="is not a backup id"):
        repo.find(bad)
    with pytest.raises(ValueError):
        repo.server_dir(bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        repo.manifest_path(uuid4(), bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        BackupRepository.archive_name(bad, "none")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        Manifest.model_validate({**new_manifest().model_dump(), "backup_id": bad})


def test_an_unknown_backup_is_named(repo: BackupRepository) -> None:
    missing = uuid4()
    with pytest.raises(InvalidOptions, match=f"no backup {missing}"):
        repo.find(missing)


def test_paths_stay_under_the_root(repo: BackupRepository) -> None:
    manifest = new_manifest()
    for path in (
        repo.server_dir(manifest.server_id),
        repo.manifest_path(manifest.server_id, manifest.backup_id),
        repo.archive_path(manifest),
    ):
        assert path.resolve().is_relative_to(repo.root.resolve())
    assert repo.manifest_path(manifest.server_id, manifest.backup_id).name == (
        f"{UUID(str(manifest.backup_id))}.json"
    )
