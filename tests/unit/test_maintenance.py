"""Archive retention applied to a repository on disk, and the maintenance schedule's settings."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path
from uuid import UUID, uuid4

import pytest
from prefect.client.schemas.schedules import CronSchedule

from deployments.control.maintenance import SCHEDULE_SLUG, check_maintenance, maintenance_schedule
from tasks.archive_retention import KeepPolicy
from tasks.core.inventory import Inventory
from tasks.core.settings import MaintenanceSettings
from tasks.maintenance import policy_for, prune_repository
from tasks.repository import LISTING_SUFFIX, BackupRepository, BackupStatus, Manifest

WEB = UUID("0d4c2b1a-6f7e-4d3c-9b2a-1c0d9e8f7a61")
GONE = UUID("9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d")
LOG = logging.getLogger("test-maintenance")


def inventory(keep: dict[str, int] | None = None, timezone: str = "UTC") -> Inventory:
    backup: dict[str, object] = {"paths": ["/srv"], "timezone": timezone}
    if keep is not None:
        backup["keep"] = keep
    return Inventory.model_validate(
        {
            "servers": [
                {
                    "id": str(WEB),
                    "name": "web1",
                    "host": "10.0.0.1",
                    "username": "root",
                    "private_key_file": "/k",
                    "backup": backup,
                }
            ]
        }
    )


def store(
    repo: BackupRepository,
    server_id: UUID,
    started: datetime,
    status: BackupStatus = BackupStatus.COMPLETED,
) -> Manifest:
    """A manifest and, unless failed, a small archive beside it; a completed one's listing."""
    backup_id = uuid4()
    manifest = Manifest(
        backup_id=backup_id,
        server_id=server_id,
        server_name="web1",
        job_type="backup:scheduled",
        paths=["/srv"],
        archive=BackupRepository.archive_name(backup_id, "gzip"),
        compression="gzip",
        started_at=started,
        size=100,
        status=status,
    )
    repo.server_dir(server_id).mkdir(parents=True, exist_ok=True)
    if status is not BackupStatus.FAILED:
        repo.archive_path(manifest).write_bytes(b"x" * 100)
    if status is BackupStatus.COMPLETED:
        repo.listing_path(manifest).write_text("")
    repo.save(manifest)
    return manifest


def days(repo: BackupRepository, server_id: UUID, count: int) -> list[Manifest]:
    """`count` completed daily backups at 02:00 UTC ending 30 June 2025, oldest first."""
    last = datetime(2025, 6, 30, 2, tzinfo=UTC)
    return [store(repo, server_id, last - timedelta(days=n)) for n in reversed(range(count))]


def files(repo: BackupRepository, server_id: UUID) -> set[str]:
    return {p.name for p in repo.server_dir(server_id).iterdir()}


def names(manifest: Manifest) -> set[str]:
    """A completed backup's files: a forget removes all three."""
    return {f"{manifest.backup_id}.json", manifest.archive, f"{manifest.backup_id}{LISTING_SUFFIX}"}


@pytest.fixture
def repo(tmp_path: Path) -> BackupRepository:
    return BackupRepository(tmp_path / "backups")


def test_removes_archive_and_manifest_together_and_nothing_else(repo: BackupRepository) -> None:
    backups = days(repo, WEB, 10)
    running = store(repo, WEB, datetime(2025, 1, 1, tzinfo=UTC), BackupStatus.RUNNING)
    failed = store(repo, WEB, datetime(2025, 1, 2, tzinfo=UTC), BackupStatus.FAILED)
    server_dir = repo.server_dir(WEB)
    partial = server_dir / f".{uuid4()}.x1y2.partial"
    partial.write_bytes(b"half")
    (server_dir / "notes.txt").write_text("mine")
    (server_dir / "broken.json").write_text("{not json")
    before = files(repo, WEB)

    [result] = prune_repository(
        repo, inventory({"last": 3, "daily": 0, "weekly": 0, "monthly": 0}), KeepPolicy(), LOG
    )

    gone = set().union(*(names(m) for m in backups[:7]))
    assert files(repo, WEB) == before - gone
    assert result.removed == [m.backup_id for m in reversed(backups[:7])]
    assert result.kept == 3
    assert result.untouched == 2
    assert result.bytes_freed == 700
    survey = repo.survey(WEB)
    assert survey.unreadable == [server_dir / "broken.json"]
    assert {m.backup_id for m in survey.manifests if m.status is BackupStatus.COMPLETED} == {
        m.backup_id for m in backups[7:]
    }
    assert repo.read(WEB, running.backup_id) == running
    assert repo.read(WEB, failed.backup_id) == failed


def test_a_dry_run_changes_nothing(repo: BackupRepository) -> None:
    days(repo, WEB, 10)
    before = files(repo, WEB)
    [result] = prune_repository(
        repo,
        inventory({"last": 1, "daily": 0, "weekly": 0, "monthly": 0}),
        KeepPolicy(),
        LOG,
        dry_run=True,
    )
    assert len(result.removed) == 9
    assert files(repo, WEB) == before


def test_servers_outside_the_inventory_get_the_defaults(repo: BackupRepository) -> None:
    backups = days(repo, GONE, 5)
    (repo.root / "not-a-server").mkdir()
    (repo.root / "not-a-server" / "x.json").write_text("{}")
    [result] = prune_repository(repo, inventory(), KeepPolicy(2, 0, 0, 0), LOG)
    assert result.server_id == GONE
    assert result.removed == [m.backup_id for m in reversed(backups[:3])]
    assert (repo.root / "not-a-server" / "x.json").exists()


def test_days_are_counted_in_the_servers_time_zone(repo: BackupRepository) -> None:
    # In UTC the 01:00 and the 22:30 backups share the 2nd of June; in Tokyo (UTC+9) the
    # 22:30 backup of the 1st and the 01:00 one share the 2nd, and the last one is the 3rd's.
    first = store(repo, WEB, datetime(2025, 6, 1, 22, 30, tzinfo=UTC))
    second = store(repo, WEB, datetime(2025, 6, 2, 1, 0, tzinfo=UTC))
    store(repo, WEB, datetime(2025, 6, 2, 22, 30, tzinfo=UTC))
    keep = {"last": 0, "daily": 2, "weekly": 0, "monthly": 0}
    [in_utc] = prune_repository(repo, inventory(keep), KeepPolicy(), LOG, dry_run=True)
    [in_tokyo] = prune_repository(repo, inventory(keep, "Asia/Tokyo"), KeepPolicy(), LOG)
    assert in_utc.removed == [second.backup_id]
    assert in_tokyo.removed == [first.backup_id]


def test_an_interrupted_forget_is_finished(repo: BackupRepository) -> None:
    old, new = days(repo, WEB, 2)
    # As if the process died right after the first step of `forget`.
    repo.manifest_path(WEB, old.backup_id).replace(repo.tombstone_path(old))
    stranger = repo.server_dir(WEB) / ".something.forget"
    stranger.write_text("not a manifest")
    assert [m.backup_id for m in repo.list(WEB)] == [new.backup_id]

    [result] = prune_repository(repo, inventory(), KeepPolicy(), LOG)

    assert files(repo, WEB) == names(new) | {stranger.name}
    assert result.removed == []


def test_the_only_completed_backup_survives_a_policy_of_zeros(repo: BackupRepository) -> None:
    only = store(repo, WEB, datetime(2020, 1, 1, tzinfo=UTC))
    store(repo, WEB, datetime(2025, 1, 1, tzinfo=UTC), BackupStatus.FAILED)
    zeros = {"last": 0, "daily": 0, "weekly": 0, "monthly": 0}
    [result] = prune_repository(repo, inventory(zeros), KeepPolicy(0, 0, 0, 0), LOG)
    assert result.removed == []
    assert repo.read(WEB, only.backup_id) == only


def test_an_empty_repository_is_fine(repo: BackupRepository) -> None:
    assert prune_repository(repo, inventory(), KeepPolicy(), LOG) == []


def test_per_server_rules_override_the_defaults_one_by_one() -> None:
    [server] = inventory({"monthly": 12, "last": 0}).servers
    assert policy_for(server, KeepPolicy(7, 7, 4, 6)) == KeepPolicy(0, 7, 4, 12)
    assert policy_for(None, KeepPolicy(1, 2, 3, 4)) == KeepPolicy(1, 2, 3, 4)


def test_negative_keep_in_the_inventory_is_refused() -> None:
    with pytest.raises(ValueError, match="greater than or equal to 0"):
        inventory({"daily": -1})


def test_maintenance_runs_daily_at_three_by_default() -> None:
    want = maintenance_schedule(MaintenanceSettings())
    assert want is not None
    assert want.slug == SCHEDULE_SLUG
    assert want.schedule == CronSchedule(cron="0 3 * * *", timezone="UTC")


def test_maintenance_schedule_is_configurable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MM_MAINTENANCE_CRON", "30 4 * * 0")
    monkeypatch.setenv("MM_MAINTENANCE_TIMEZONE", "Europe/Paris")
    want = maintenance_schedule(MaintenanceSettings())
    assert want is not None
    assert want.schedule == CronSchedule(cron="30 4 * * 0", timezone="Europe/Paris")
    monkeypatch.setenv("MM_MAINTENANCE_CRON", "")
    assert maintenance_schedule(MaintenanceSettings()) is None


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("MM_MAINTENANCE_CRON", "every day", "not a valid cron expression"),
        ("MM_MAINTENANCE_TIMEZONE", "Mars/Olympus", "not an IANA time zone"),
    ],
)
def test_bad_schedule_settings_are_refused(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, message: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ValueError, match=f"{variable}: .*{message}"):
        check_maintenance(MaintenanceSettings())


def test_a_manifest_under_another_name_is_left_alone(repo: BackupRepository) -> None:
    old, _new = days(repo, WEB, 2)
    copy = repo.server_dir(WEB) / f"{uuid4()}.json"
    copy.write_bytes(repo.manifest_path(WEB, old.backup_id).read_bytes())
    [result] = prune_repository(repo, inventory({"last": 1}), KeepPolicy(0, 0, 0, 0), LOG)
    assert result.removed == [old.backup_id]
    assert copy.exists()
    assert repo.survey(WEB).unreadable == [copy]


def test_an_archive_gone_or_cut_short_does_not_count_as_the_good_backup(
    repo: BackupRepository,
) -> None:
    """The two newest completed backups lost their archive (one deleted, one truncated) before
    any check saw it: under a policy of zeros the newest backup whose archive is in place stays,
    and the two are left for a check to mark corrupt, not deleted."""
    older, last_good, truncated, deleted = days(repo, WEB, 4)
    corrupt = store(repo, WEB, datetime(2025, 7, 1, tzinfo=UTC), BackupStatus.CORRUPT)
    repo.archive_path(deleted).unlink()
    repo.archive_path(truncated).write_bytes(b"x" * 10)
    zeros = {"last": 0, "daily": 0, "weekly": 0, "monthly": 0}

    [result] = prune_repository(repo, inventory(zeros), KeepPolicy(), LOG)

    assert result.removed == [older.backup_id]
    assert result.kept == 1 and result.untouched == 3
    assert files(repo, WEB) == (
        names(last_good)
        | names(truncated)
        | {f"{corrupt.backup_id}.json", corrupt.archive}
        | {f"{deleted.backup_id}.json", f"{deleted.backup_id}{LISTING_SUFFIX}"}
    )
