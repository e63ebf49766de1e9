"""Encrypted backups end to end: a real worker, a real sshd, the `age` binary in the pipe.

What must hold: the restore with the identity equals the source tree, for each codec; the
`age` CLI and `tar` alone read the same archive (no lock-in); no process opens the identity
file during a backup, and no worker has MM_BACKUP_IDENTITY although the stack started with it
set (tests/support/session.py); encryption asked for without a recipient is a 422 from the API
and no job.
"""

from __future__ import annotations

import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from prefect.client.schemas.objects import FlowRun

from deployments.system.local_target import descendants
from deployments.system.stack import Stack
from tasks.archive_files import restore
from tasks.archive_listing import load_listing
from tasks.repository import CODECS, BackupRepository, BackupStatus, Compression
from tests.support.age import Identity, OpenWatch
from tests.support.api import Api, error, ok
from tests.support.trees import make_tree, restored, tree_digest


def environment_of(pid: int) -> dict[str, str]:
    """A process's environment as it started (what it inherited), {} once it is gone."""
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return {}
    pairs = (entry.partition(b"=") for entry in raw.split(b"\0") if entry)
    return {key.decode(): value.decode("utf-8", "replace") for key, _, value in pairs}


def _final(run: FlowRun) -> bool:
    return run.state is not None and run.state.is_final()


def backup_processes(stack: Stack) -> set[int]:
    """The backup worker, its fork server and every run (and ssh, age) below it now."""
    worker = stack.workers["backup"]
    assert worker.pid is not None
    return {worker.pid, *descendants(worker.pid)}


@pytest.mark.parametrize("compression", ["none", "gzip", "zstd"])
def test_an_encrypted_backup_restores_with_the_identity_and_the_age_cli_reads_it(
    stack: Stack,
    target,
    inventory,
    run_job,
    wait_for_final_state,
    tmp_path: Path,
    age_identity: Identity,
    compression: Compression,
) -> None:
    source = make_tree(tmp_path / "source", big_bytes=20_000_000)
    server_id = inventory.add_server(
        target,
        backup={"paths": [str(source)], "encrypt": True, "recipients": [age_identity.recipient]},
    )
    backup_id = uuid.uuid4()
    seen: set[int] = set()

    with OpenWatch(age_identity.path) as watch:
        run_id = run_job(
            "backup/backup",
            {
                "server_id": str(server_id),
                "backup_id": str(backup_id),
                "options": {"compression": compression},
            },
        )
        # The run's processes while it runs: none may have inherited the identity's path.
        deadline = time.monotonic() + 120
        with stack.sync_client() as client:
            while time.monotonic() < deadline and not _final(client.read_flow_run(run_id)):
                for pid in backup_processes(stack) - seen:
                    seen.add(pid)
                    assert "MM_BACKUP_IDENTITY" not in environment_of(pid), pid
                time.sleep(0.05)
        run = wait_for_final_state(run_id)
        assert run.state.is_completed(), run.state.message
        assert watch.count() == 0, "the identity file was opened during the backup"

        repo = BackupRepository(stack.backup_root)
        manifest = repo.read(server_id, backup_id)
        assert manifest is not None and manifest.status is BackupStatus.COMPLETED
        assert manifest.archive.endswith(CODECS[compression][0] + ".age")
        assert manifest.recipients == [age_identity.recipient]
        assert manifest.plaintext_sha256 and manifest.plaintext_sha256 != manifest.sha256
        assert manifest.file_count == 5
        listed = {m.path for m in load_listing(repo.listing_path(manifest))}
        assert str(source.relative_to("/") / "nested" / "b.bin") in listed
        stored = repo.verify(manifest)
        assert (stored.sha256, stored.decrypted) == (manifest.sha256, False)

        destination = tmp_path / "restore"
        restore(repo, manifest, destination, identity=age_identity.path)
        # The watch sees opens at all: the restore's age read the identity.
        assert watch.count() > 0
    assert tree_digest(restored(destination, source)) == tree_digest(source)

    # No lock-in: the age CLI and tar, nothing of ours.
    by_hand = tmp_path / "by-hand"
    by_hand.mkdir()
    subprocess.run(
        f"age --decrypt -i '{age_identity.path}' '{repo.archive_path(manifest)}'"
        f" | tar -x {' '.join(CODECS[compression][1])} -C '{by_hand}'",
        shell=True,
        check=True,
    )
    assert tree_digest(restored(by_hand, source)) == tree_digest(source)


def test_no_process_of_the_stack_inherits_the_identity(stack: Stack) -> None:
    """The stack started with MM_BACKUP_IDENTITY set (tests/support/session.py)."""
    children = [*stack.workers.values(), *([stack.shim] if stack.shim else [])]
    pids = {pid for child in children if (pid := child.pid) is not None}
    pids |= {p for pid in list(pids) for p in descendants(pid)}
    assert len(pids) >= len(children)
    leaked = {pid for pid in pids if "MM_BACKUP_IDENTITY" in environment_of(pid)}
    assert not leaked


@pytest.fixture(scope="module")
def admin(stack: Stack) -> Iterator[Api]:
    assert stack.shim_url and stack.jwt_secret
    with Api(stack.shim_url, stack.jwt_secret, "root", "admin") as api:
        yield api


def test_encryption_without_a_recipient_is_a_422_and_no_job(
    stack: Stack, target, inventory, admin: Api, tmp_path: Path
) -> None:
    source = make_tree(tmp_path / "source", big_bytes=1000)
    asked = inventory.add_server(target, backup={"paths": [str(source)]})
    marked = inventory.add_server(target, backup={"paths": [str(source)], "encrypt": True})

    for server_id, body in ((asked, {"encryption": True}), (marked, {"compression": True})):
        message = error(admin.post(f"/api/servers/{server_id}/backup", json=body), 422)
        assert "no recipient is configured: set MM_BACKUP_RECIPIENTS" in message
    jobs = ok(admin.get("/api/jobs", params={"limit": 200}))["jobs"]
    assert not {str(asked), str(marked)} & {job["data"].get("serverId") for job in jobs}
