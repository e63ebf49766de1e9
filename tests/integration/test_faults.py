"""Breaking the SSH side on purpose: no half archive is ever visible or marked good."""

from __future__ import annotations

import os
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from deployments.system.local_target import LocalTarget
from tasks.archive_files import restore
from tasks.repository import BackupRepository, BackupStatus
from tests.support.proxy import FaultyProxy
from tests.support.runs import task_run_named
from tests.support.trees import restored, tree_digest

SOURCE_BYTES = 24_000_000
#: Slow enough that the transfer is still running when sshd is killed.
RATE = 3_000_000


@pytest.fixture
def victim(tmp_path: Path):
    """An sshd of this test's own, behind a throttling proxy, so it can be killed mid-stream."""
    target = LocalTarget(home=tmp_path / "victim").start()
    proxy = FaultyProxy(target.port, bytes_per_second=RATE).start()
    (tmp_path / "known_hosts").write_text(target.known_hosts_line(proxy.port))
    yield target, proxy
    proxy.close()
    target.kill()


def _wait_for_partial(server_dir: Path, backup_id: uuid.UUID, at_least: int) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        for partial in server_dir.glob(f".{backup_id}.*.partial"):
            if partial.stat().st_size >= at_least:
                return
        time.sleep(0.1)
    pytest.fail(f"no partial archive of {at_least} bytes appeared in {server_dir}")


@pytest.mark.parametrize("sshd_comes_back", [False, True], ids=["stays-dead", "restarted"])
def test_sshd_killed_mid_transfer_leaves_no_archive_marked_good(
    stack, inventory, run_job, wait_for_final_state, tmp_path, victim, sshd_comes_back
):
    target, proxy = victim
    source = tmp_path / "source"
    source.mkdir()
    (source / "big.bin").write_bytes(os.urandom(SOURCE_BYTES))
    server_id = inventory.add_server(
        target,
        port=proxy.port,
        known_hosts_file=str(tmp_path / "known_hosts"),
        backup={"paths": [str(source)]},
    )
    backup_id = uuid.uuid4()
    repo = BackupRepository(stack.backup_root)

    run_id = run_job("backup/backup", {"server_id": str(server_id), "backup_id": str(backup_id)})
    _wait_for_partial(repo.server_dir(server_id), backup_id, at_least=RATE)
    target.kill()
    if sshd_comes_back:
        target.start()
    run = wait_for_final_state(run_id, timeout=180)

    manifest = repo.read(server_id, backup_id)
    assert manifest is not None
    leftovers = sorted(p.name for p in repo.server_dir(server_id).iterdir())
    if sshd_comes_back:
        # The transfer was retried from the start and completed: a whole, verified archive.
        assert run.state.is_completed(), run.state.message
        assert manifest.status is BackupStatus.COMPLETED
        assert leftovers == [f"{backup_id}.files.jsonl", f"{backup_id}.json", f"{backup_id}.tar"]
        destination = tmp_path / "restore"
        restore(repo, manifest, destination)
        assert tree_digest(restored(destination, source)) == tree_digest(source)
    else:
        assert run.state.is_failed()
        assert "connect" in (run.state.message or "")
        assert manifest.status is BackupStatus.FAILED
        assert leftovers == [f"{backup_id}.json"]  # no archive, no temp file


@pytest.mark.timeout(240)
def test_a_full_disk_fails_the_backup_clearly_and_keeps_the_good_archive(
    stack, target, inventory, run_job, wait_for_final_state, tmp_path
):
    """The server's folder of the repository is a 4 MiB tmpfs. A first, small backup fits and
    completes; a second one of 24 MB runs out of space. It must fail at once (a retry would fill
    the disk again) saying the disk is full, leave no archive or temp file of its own, and the
    first archive must still verify: a failed backup never replaces a good one."""
    source = tmp_path / "source"
    source.mkdir()
    (source / "small.bin").write_bytes(os.urandom(100_000))
    server_id = inventory.add_server(target, backup={"paths": [str(source)]})
    repo = BackupRepository(stack.backup_root)
    server_dir = repo.server_dir(server_id)
    server_dir.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(server_dir)], check=True)
    try:
        good_id, full_id = uuid.uuid4(), uuid.uuid4()
        run = wait_for_final_state(
            run_job("backup/backup", {"server_id": str(server_id), "backup_id": str(good_id)})
        )
        assert run.state.is_completed(), run.state.message

        (source / "big.bin").write_bytes(os.urandom(SOURCE_BYTES))
        run = wait_for_final_state(
            run_job("backup/backup", {"server_id": str(server_id), "backup_id": str(full_id)}),
            timeout=180,
        )
        assert run.state.is_failed()
        assert "RepositoryFull" in (run.state.message or ""), run.state.message
        assert "disk is full" in (run.state.message or ""), run.state.message
        with stack.sync_client() as client:
            assert task_run_named(client, run.id, "transfer archive").run_count == 1

        good = repo.read(server_id, good_id)
        assert good is not None and good.status is BackupStatus.COMPLETED
        repo.verify(good)
        failed = repo.read(server_id, full_id)
        assert failed is not None and failed.status is BackupStatus.FAILED
        assert sorted(p.name for p in server_dir.iterdir()) == sorted(
            [f"{good_id}.files.jsonl", f"{good_id}.json", f"{good_id}.tar", f"{full_id}.json"]
        )
    finally:
        subprocess.run(["umount", "--lazy", str(server_dir)], check=False)
