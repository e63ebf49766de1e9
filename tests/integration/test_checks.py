"""The archive check on the session stack: its own deployment, scheduled on the `low` queue, and
started on demand through the API; it finds a byte flipped in a stored archive, not a restore.

Breaks: one byte of a real backup's archive (made over the real sshd), in the repository, after
the backup completed and verified. Must survive: the other backup of the server, which matches
and gets its check time; the check job fails naming the broken backup, whose manifest says
`corrupt` with the mismatch; the job's result lists it (`GET /api/jobs/:id`), `/metrics`
counts one corrupt archive for the server, and the server's `notify:` webhook gets one message
(deployments/control/notifications.py, the corrupt-archives automation).
"""

from __future__ import annotations

import asyncio
import io
import re
import tarfile
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from deployments.control.catalogue import CHECK
from deployments.control.checks import SCHEDULE_SLUG
from deployments.control.notifications import ensure_notifications
from deployments.system.local_target import LocalTarget
from deployments.system.stack import Stack
from tasks.core.inventory import load_inventory
from tasks.core.settings import NotifySettings
from tasks.repository import BackupRepository, BackupStatus, Manifest
from tests.integration.conftest import CHECK_CRON, InventoryFile
from tests.support.api import Api, error, ok
from tests.support.receivers import Webhook, wait_until
from tests.support.trees import make_tree


@pytest.fixture(scope="module")
def admin(stack: Stack) -> Iterator[Api]:
    assert stack.shim_url and stack.jwt_secret
    with Api(stack.shim_url, stack.jwt_secret, "root", role="admin") as api:
        yield api


def older_backup(repo: BackupRepository, like: Manifest) -> Manifest:
    """A second, older completed backup of the same server, whose archive matches."""
    backup_id = uuid.uuid4()
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        member = tarfile.TarInfo("srv/old.txt")
        member.size = 3
        tar.addfile(member, io.BytesIO(b"old"))
    manifest = like.model_copy(
        update={
            "backup_id": backup_id,
            "job_id": None,
            "archive": BackupRepository.archive_name(backup_id, "none"),
            "compression": "none",
            "started_at": like.started_at - timedelta(days=1),
            "finished_at": like.started_at - timedelta(days=1),
        }
    )
    with repo.open_archive(manifest) as out:
        out.write(buffer.getvalue())
    done = manifest.model_copy(update={"size": out.size, "sha256": out.sha256, "file_count": 1})
    repo.save(done)
    return done


def test_the_check_is_scheduled_alone_on_the_low_queue(stack: Stack) -> None:
    with stack.sync_client() as client:
        deployment = client.read_deployment_by_name(CHECK.full_name)
        schedules = client.read_deployment_schedules(deployment.id)
    assert (deployment.work_pool_name, deployment.work_queue_name) == ("scan", "low")
    assert deployment.global_concurrency_limit is not None
    assert deployment.global_concurrency_limit.limit == 1
    [schedule] = schedules
    assert schedule.slug == SCHEDULE_SLUG and schedule.active
    assert schedule.schedule.cron == CHECK_CRON  # type: ignore[union-attr]
    assert schedule.parameters == {"job_type": "check:archives"}


@pytest.mark.timeout(240)
def test_a_flipped_byte_is_found_by_the_check_job(
    stack: Stack,
    target: LocalTarget,
    inventory: InventoryFile,
    admin: Api,
    run_job,
    wait_for_final_state,
    tmp_path,
) -> None:
    source = make_tree(tmp_path / "source", big_bytes=50_000)
    webhook = Webhook()
    server_id = inventory.add_server(
        target,
        name="web-checked",
        backup={"paths": [str(source)]},
        notify=[f"json://127.0.0.1:{webhook.port}/checked"],
    )
    try:
        _a_flipped_byte_is_found(
            stack, inventory, admin, run_job, wait_for_final_state, webhook, server_id
        )
    finally:
        inventory.remove(server_id)
        # No `notify:` left: the automations and block made for this server go.
        asyncio.run(_notifications(stack, inventory))
        webhook.close()


async def _notifications(stack: Stack, inventory: InventoryFile) -> list[str]:
    async with stack.client() as client:
        return await ensure_notifications(
            client, load_inventory(inventory.path), NotifySettings(urls=None)
        )


def _a_flipped_byte_is_found(
    stack: Stack,
    inventory: InventoryFile,
    admin: Api,
    run_job,
    wait_for_final_state,
    webhook: Webhook,
    server_id: uuid.UUID,
) -> None:
    backup_id = uuid.uuid4()
    run = wait_for_final_state(
        run_job("backup/backup", {"server_id": str(server_id), "backup_id": str(backup_id)})
    )
    assert run.state.is_completed(), run.state.message
    repo = BackupRepository(stack.backup_root)
    stored = repo.read(server_id, backup_id)
    assert stored is not None and stored.status is BackupStatus.COMPLETED
    matching = older_backup(repo, stored)
    archive = repo.archive_path(stored)
    data = bytearray(archive.read_bytes())
    data[len(data) // 2] ^= 0x40  # inside b.bin's random bytes: tar still lists the archive
    archive.write_bytes(bytes(data))
    # The bootstrap's part for the server's `notify:` list, as after an edit of the inventory.
    assert any("corrupt archives" in c for c in asyncio.run(_notifications(stack, inventory)))

    # Users may not start checks; an admin's runs through the check deployment.
    with Api(stack.shim_url or "", stack.jwt_secret or "", "someone") as user:
        assert "admins only" in error(user.post("/api/backups/check", json={}), 403)
    before = datetime.now(UTC)
    enqueued = ok(
        admin.post("/api/backups/check", json={"all": True, "server_id": str(server_id)}), 202
    )
    assert enqueued["status"] == "pending"
    job = admin.wait_for_state(enqueued["jobId"], "completed", "failed", "cancelled")

    assert job["state"] == "failed", job
    assert job["name"] == "check:archives" and job["queue"] == "scan"
    assert f"backup {backup_id} of server {server_id}" in job["failedReason"]
    assert str(matching.backup_id) not in job["failedReason"]
    result = job["result"]
    assert result["checked"] == 2 and result["matched"] == 1
    [corrupt] = result["corrupt"]
    assert corrupt["backupId"] == str(backup_id) and corrupt["serverId"] == str(server_id)
    assert "sha256" in corrupt["error"] and "does not match" in corrupt["error"]
    with stack.sync_client() as client:
        flow_run = client.read_flow_run(uuid.UUID(enqueued["jobId"]))
    assert flow_run.work_queue_name == "low"

    broken = repo.read(server_id, backup_id)
    assert broken is not None
    assert broken.status is BackupStatus.CORRUPT
    assert broken.error == corrupt["error"]
    good = repo.read(server_id, matching.backup_id)
    assert good is not None and good.status is BackupStatus.COMPLETED
    assert good.checked_at is not None and good.checked_at >= before

    metrics = httpx.get(f"{stack.shim_url}/metrics", timeout=30).text
    found = re.search(
        rf'^mm_backup_corrupt_archives\{{server_id="{server_id}"\}} (\S+)$', metrics, re.M
    )
    assert found is not None, metrics[-2000:]
    assert float(found.group(1)) == 1.0

    wait_until(lambda: webhook.titled("corrupt", "/checked"), 30, "the corrupt-archive message")
    [told] = webhook.titled("corrupt", "/checked")
    assert told["title"] == "medicine-man: 1 corrupt backups of web-checked", told
    assert str(backup_id) in told["message"] and str(matching.backup_id) not in told["message"]
    time.sleep(2)
    assert len(webhook.at("/checked")) == 1, webhook.at("/checked")
