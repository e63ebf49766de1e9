"""The maintenance flow on the session stack: scheduled on the `low` queue, run by `medicine-man
clean`, it deletes old job records and old backup archives and nothing else.

Breaks: nothing; seeds what retention must find. Two servers' repositories hold daily backups
(one server with its own `backup.keep` rules, one no longer in the inventory, under the
defaults), plus a running and a failed backup and a partial file; four job records of the
maintenance deployment, two of them ended ten days ago. Must survive: exactly the backups the
policy keeps (whole: archives verify), the running and failed ones, the partial file, the recent
job records; a dry run first deletes nothing.
"""

from __future__ import annotations

import io
import sqlite3
import tarfile
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID, uuid4

from prefect.client.schemas.objects import StateType
from prefect.exceptions import ObjectNotFound
from prefect.states import Completed, Failed
from typer.testing import CliRunner

from deployments.cli import main as cli
from deployments.control.catalogue import MAINTENANCE
from deployments.control.maintenance import SCHEDULE_SLUG
from deployments.system.stack import Stack
from tasks.repository import BackupRepository, BackupStatus, Manifest
from tests.integration.conftest import MAINTENANCE_CRON, InventoryFile

runner = CliRunner()

#: How Prefect's SQLite tables store times (UTC).
SQLITE_TIME = "%Y-%m-%d %H:%M:%S.%f"
LAST_DAY = datetime(2025, 6, 30, 2, tzinfo=UTC)


def repository(stack: Stack) -> BackupRepository:
    return BackupRepository(stack.backup_root or stack.data_dir / "backups")


def store(
    repo: BackupRepository,
    server_id: UUID,
    started: datetime,
    status: BackupStatus = BackupStatus.COMPLETED,
) -> Manifest:
    """A backup as the backup flow leaves it: a small real tar beside its manifest."""
    backup_id = uuid4()
    manifest = Manifest(
        backup_id=backup_id,
        server_id=server_id,
        server_name="retained",
        job_type="backup:scheduled",
        paths=["/srv"],
        archive=BackupRepository.archive_name(backup_id, "none"),
        started_at=started,
        status=BackupStatus.RUNNING,
    )
    if status is BackupStatus.FAILED:
        repo.server_dir(server_id).mkdir(parents=True, exist_ok=True)
        repo.save(manifest.model_copy(update={"status": status}))
        return manifest
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        data = str(backup_id).encode()
        member = tarfile.TarInfo("srv/id")
        member.size = len(data)
        tar.addfile(member, io.BytesIO(data))
    with repo.open_archive(manifest) as out:
        out.write(buffer.getvalue())
    done = manifest.model_copy(
        update={"size": out.size, "sha256": out.sha256, "file_count": 1, "status": status}
    )
    repo.save(done)
    return done


def daily(repo: BackupRepository, server_id: UUID, count: int) -> dict[str, Manifest]:
    """`count` daily backups at 02:00 UTC up to 30 June 2025, by ISO date."""
    made = {}
    for n in range(count):
        manifest = store(repo, server_id, LAST_DAY - timedelta(days=n))
        made[manifest.started_at.date().isoformat()] = manifest
    return made


def job_record(stack: Stack, state: Any, ended_days_ago: float) -> UUID:
    """A finished run of the maintenance deployment that ended `ended_days_ago` days ago."""
    with stack.sync_client() as client:
        deployment = client.read_deployment_by_name(MAINTENANCE.full_name)
        run = client.create_flow_run_from_deployment(
            deployment.id, state=state, tags=["retention-test"]
        )
    if ended_days_ago:
        # The API sets end times to now; only the database can make a record old.
        assert not stack.backend or not stack.backend.scaled, "seeds the embedded SQLite only"
        ended = datetime.now(UTC).replace(tzinfo=None) - timedelta(days=ended_days_ago)
        with sqlite3.connect(stack.prefect_home / "prefect.db", timeout=30) as db:
            changed = db.execute(
                "UPDATE flow_run SET end_time = ? WHERE id = ?",
                (ended.strftime(SQLITE_TIME), str(run.id)),
            ).rowcount
        assert changed == 1
    return run.id


def exists(stack: Stack, run_id: UUID) -> bool:
    with stack.sync_client() as client:
        try:
            client.read_flow_run(run_id)
        except ObjectNotFound:
            return False
    return True


def clean(*args: str) -> tuple[UUID, str]:
    """`medicine-man clean --wait ARGS`; returns the job id and the summary line."""
    result = runner.invoke(cli.app, ["clean", "--wait", *args])
    assert result.exit_code == 0, result.output
    job_id, *_, summary = result.stdout.splitlines()
    return UUID(job_id), summary


def test_maintenance_is_scheduled_alone_on_the_low_queue(stack: Stack) -> None:
    with stack.sync_client() as client:
        deployment = client.read_deployment_by_name(MAINTENANCE.full_name)
        schedules = client.read_deployment_schedules(deployment.id)
    assert (deployment.work_pool_name, deployment.work_queue_name) == ("scan", "low")
    assert deployment.global_concurrency_limit is not None
    assert deployment.global_concurrency_limit.limit == 1
    [schedule] = [s for s in schedules if s.slug == SCHEDULE_SLUG]
    assert schedule.schedule.cron == MAINTENANCE_CRON  # type: ignore[union-attr]
    assert schedule.schedule.timezone == "UTC"  # type: ignore[union-attr]
    assert schedule.active
    assert len(schedules) == 1


def test_clean_deletes_old_job_records_and_archives_and_nothing_else(
    stack: Stack, inventory: InventoryFile
) -> None:
    repo = repository(stack)
    # Own rules: the 2 newest, 2 days, 1 week, 2 months -> 30 and 29 June, 31 May.
    ruled = inventory.add_server(
        host="127.0.0.1",
        username="nobody",
        private_key_file="/nonexistent/id_ed25519",
        backup={"paths": ["/srv"], "keep": {"last": 2, "daily": 2, "weekly": 1, "monthly": 2}},
    )
    ruled_backups = daily(repo, ruled, 42)  # 20 May to 30 June
    running = store(repo, ruled, datetime(2025, 1, 1, tzinfo=UTC), BackupStatus.RUNNING)
    failed = store(repo, ruled, datetime(2025, 1, 2, tzinfo=UTC), BackupStatus.FAILED)
    partial = repo.server_dir(ruled) / f".{uuid4()}.abc123.partial"
    partial.write_bytes(b"half an archive")
    # Not in the inventory, so the defaults (7 / 7 / 4 / 6): 24-30 June, and 22 June (its week).
    orphan = uuid4()
    orphan_backups = daily(repo, orphan, 10)  # 21 to 30 June

    old_completed = job_record(stack, Completed(), ended_days_ago=10)
    old_failed = job_record(stack, Failed(message="long ago"), ended_days_ago=10)
    recent = [job_record(stack, Completed(), 0), job_record(stack, Failed(message="today"), 0)]

    # A dry run first: it counts, and deletes nothing.
    before = {server: sorted(repo.server_dir(server).iterdir()) for server in (ruled, orphan)}
    _, summary = clean("--dry-run")
    assert summary.startswith("would delete 2 job records (")
    assert "would delete 41 backup archives" in summary  # 39 + 2
    assert {s: sorted(repo.server_dir(s).iterdir()) for s in (ruled, orphan)} == before
    assert exists(stack, old_completed) and exists(stack, old_failed)

    job_id, summary = clean()

    assert summary.startswith("deleted 2 job records (")
    assert "deleted 41 backup archives" in summary
    with stack.sync_client() as client:
        run = client.read_flow_run(job_id)
    assert (run.work_pool_name, run.work_queue_name) == ("scan", "low")
    assert run.state is not None and run.state.type is StateType.COMPLETED
    assert not exists(stack, old_completed)
    assert not exists(stack, old_failed)
    assert all(exists(stack, run_id) for run_id in recent)

    expected = {
        ruled: {"2025-06-30", "2025-06-29", "2025-05-31"},
        orphan: {f"2025-06-{day}" for day in (22, 24, 25, 26, 27, 28, 29, 30)},
    }
    for server, backups in ((ruled, ruled_backups), (orphan, orphan_backups)):
        survey = repo.survey(server)
        assert survey.unreadable == []
        left = {m.backup_id for m in survey.manifests if m.status is BackupStatus.COMPLETED}
        assert left == {backups[day].backup_id for day in expected[server]}
        for day, manifest in backups.items():
            if day in expected[server]:
                repo.verify(manifest)
            else:
                assert not repo.archive_path(manifest).exists()
                assert not repo.manifest_path(server, manifest.backup_id).exists()
    assert repo.read(ruled, running.backup_id) is not None
    assert repo.read(ruled, failed.backup_id) is not None
    assert partial.exists()
    leftovers = {p.name for p in repo.server_dir(ruled).iterdir()}
    assert not [name for name in leftovers if name.endswith(".forget")]
    inventory.remove(ruled)
