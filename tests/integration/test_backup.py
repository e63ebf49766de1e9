"""Backups through the backup pool, a real worker and a real sshd, end to end."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import pytest

from deployments.system.stack import Stack
from tasks.archive_files import restore
from tasks.archive_listing import load_listing
from tasks.outcome import read_result
from tasks.progress import read_progress
from tasks.repository import BackupRepository, BackupStatus
from tests.support.runs import task_run_named
from tests.support.trees import make_tree, restored, tree_digest


def progress_and_result(stack: Stack, run_id: uuid.UUID) -> tuple[float | None, dict | None]:
    async def read() -> tuple[float | None, dict | None]:
        async with stack.client() as client:
            reading = await read_progress(client, run_id)
            result = await read_result(client, run_id)
        return (reading.percent if reading else None), result

    return asyncio.run(read())


@pytest.mark.parametrize("compression", ["none", "zstd", "gzip"])
def test_backup_restores_to_an_identical_tree(
    stack, target, inventory, run_job, wait_for_final_state, tmp_path, compression
):
    source = make_tree(tmp_path / "source")
    server_id = inventory.add_server(target, backup={"paths": [str(source)]})
    backup_id = uuid.uuid4()

    run_id = run_job(
        "backup/backup",
        {
            "server_id": str(server_id),
            "backup_id": str(backup_id),
            "user_id": "user-1",
            "options": {"compression": compression},
        },
    )
    run = wait_for_final_state(run_id)

    assert run.state.is_completed(), run.state.message
    repo = BackupRepository(stack.backup_root)
    manifest = repo.read(server_id, backup_id)
    assert manifest is not None
    assert manifest.status is BackupStatus.COMPLETED
    assert manifest.job_id == run_id
    assert manifest.user_id == "user-1"
    assert manifest.compression == compression
    assert manifest.file_count == 5  # a.txt, empty, b.bin, c.txt, "d e.txt"
    archive = repo.archive_path(manifest)
    assert archive.stat().st_size == manifest.size
    assert repo.verify(manifest).sha256 == manifest.sha256
    percent, result = progress_and_result(stack, run_id)
    assert percent == 100
    assert result is not None
    assert result["backupId"] == str(backup_id)
    assert result["status"] == "completed"
    assert result["sha256"] == manifest.sha256

    # The listing, written at backup time: every member, as the restore below writes them.
    listed = {m.path: m.type for m in load_listing(repo.listing_path(manifest))}
    files = [path for path, kind in listed.items() if kind == "file"]
    assert len(files) == manifest.file_count

    destination = tmp_path / "restore"
    done = restore(repo, manifest, destination)
    assert tree_digest(restored(destination, source)) == tree_digest(source)
    assert done.written == list(listed)


def test_same_backup_id_never_makes_a_second_archive(
    stack, target, inventory, run_job, wait_for_final_state, tmp_path
):
    source = make_tree(tmp_path / "source", big_bytes=10_000)
    server_id = inventory.add_server(target, backup={"paths": [str(source)]})
    backup_id = str(uuid.uuid4())
    first = wait_for_final_state(
        run_job("backup/backup", {"server_id": str(server_id), "backup_id": backup_id})
    )
    assert first.state.is_completed(), first.state.message
    repo = BackupRepository(stack.backup_root)
    before = repo.read(server_id, uuid.UUID(backup_id))

    (source / "added later.txt").write_text("must not appear in the existing backup")
    second = wait_for_final_state(
        run_job("backup/backup", {"server_id": str(server_id), "backup_id": backup_id})
    )

    assert second.state.is_completed(), second.state.message
    assert repo.read(server_id, uuid.UUID(backup_id)) == before
    files = sorted(p.name for p in repo.server_dir(server_id).iterdir())
    assert files == [f"{backup_id}.files.jsonl", f"{backup_id}.json", f"{backup_id}.tar"]


def test_hostile_path_is_backed_up_as_a_path_and_never_executed(
    stack, target, inventory, run_job, wait_for_final_state, tmp_path
):
    witness = tmp_path / "executed"
    hostile = tmp_path / f"sp ace 'q' \"dq\" $(touch {witness}) `touch {witness}`; touch {witness}"
    hostile.mkdir(parents=True)
    (hostile / "file.txt").write_text("payload\n")
    server_id = inventory.add_server(target, backup={"paths": [str(hostile)]})

    run = wait_for_final_state(run_job("backup/backup", {"server_id": str(server_id)}))

    assert run.state.is_completed(), run.state.message
    assert not witness.exists()
    repo = BackupRepository(stack.backup_root)
    (manifest,) = repo.list(server_id)
    destination = tmp_path / "restore"
    restore(repo, manifest, destination)
    assert (restored(destination, hostile) / "file.txt").read_text() == "payload\n"
    assert not witness.exists()


def test_post_command_runs_even_when_the_backup_fails(
    stack, target, inventory, run_job, wait_for_final_state, tmp_path
):
    source = make_tree(tmp_path / "source", big_bytes=1000)
    post_marker = tmp_path / "post ran"
    server_id = inventory.add_server(
        target,
        backup={
            "paths": [str(source)],
            "pre": "echo stopping; exit 4",
            "post": f"touch '{post_marker}'",
        },
    )

    run = wait_for_final_state(run_job("backup/backup", {"server_id": str(server_id)}))

    assert run.state.is_failed()
    assert "status 4" in (run.state.message or "")
    assert post_marker.exists()
    repo = BackupRepository(stack.backup_root)
    (manifest,) = repo.list(server_id)
    assert manifest.status is BackupStatus.FAILED
    assert not repo.archive_path(manifest).exists()
    assert [p.name for p in repo.server_dir(server_id).iterdir()] == [f"{manifest.backup_id}.json"]


def test_missing_path_fails_at_once_naming_the_path(
    stack, target, inventory, run_job, wait_for_final_state, tmp_path: Path
):
    missing = tmp_path / "not here"
    server_id = inventory.add_server(target, backup={"paths": [str(missing)]})

    run = wait_for_final_state(run_job("backup/backup", {"server_id": str(server_id)}))

    assert run.state.is_failed()
    assert str(missing) in (run.state.message or "")
    with stack.sync_client() as client:
        planning = task_run_named(client, run.id, "verify server")
    assert planning.run_count == 1  # a permanent error is not retried
