"""The archive check without Prefect: the share each run re-reads (and that it keeps every archive
within MM_CHECK_DAYS), what re-reading records in the manifests, the job's failure, and the
counts behind the metrics gauge.

The same job against a real sshd and a real Prefect: tests/integration/test_checks.py.
"""

from __future__ import annotations

import io
import os
import random
import tarfile
from datetime import UTC, datetime, timedelta
from pathlib import Path
from uuid import UUID, uuid4

import pytest
from prefect.client.schemas.schedules import CronSchedule

import tasks.archive_checks
from deployments.control.checks import SCHEDULE_SLUG, check_checks, check_schedule
from flows.check import check
from tasks.archive_checks import (
    DAY,
    CorruptCounter,
    check_archive,
    check_share,
    choose_share,
    last_read,
)
from tasks.core.errors import ArchiveInvalid
from tasks.core.settings import CheckSettings, SettingsError, read_settings
from tasks.repository import BackupRepository, BackupStatus, Manifest
from tests.support.offline import Offline, offline

__all__ = ["offline"]

SERVER = UUID("0d4c2b1a-6f7e-4d3c-9b2a-1c0d9e8f7a61")
NOW = datetime(2026, 6, 30, 4, tzinfo=UTC)


def manifest(
    finished: datetime,
    *,
    size: int = 1000,
    checked: datetime | None = None,
    status: BackupStatus = BackupStatus.COMPLETED,
) -> Manifest:
    backup_id = uuid4()
    return Manifest(
        backup_id=backup_id,
        server_id=SERVER,
        server_name="web1",
        job_type="backup:scheduled",
        paths=["/srv"],
        archive=BackupRepository.archive_name(backup_id, "none"),
        started_at=finished - timedelta(minutes=5),
        finished_at=finished,
        checked_at=checked,
        size=size,
        status=status,
    )


def store(repo: BackupRepository, finished: datetime, server_id: UUID = SERVER) -> Manifest:
    """A completed backup as the backup flow leaves it: a real small tar and its checksum."""
    written = manifest(finished).model_copy(update={"server_id": server_id})
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        data = str(written.backup_id).encode()
        member = tarfile.TarInfo("srv/id")
        member.size = len(data)
        tar.addfile(member, io.BytesIO(data))
    with repo.open_archive(written) as out:
        out.write(buffer.getvalue())
    done = written.model_copy(update={"size": out.size, "sha256": out.sha256, "file_count": 1})
    repo.save(done)
    return done


def flip_a_byte(repo: BackupRepository, backup: Manifest, offset: int = 600) -> None:
    path = repo.archive_path(backup)
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.fixture
def repo(tmp_path: Path) -> BackupRepository:
    return BackupRepository(tmp_path / "backups")


# --- the share --------------------------------------------------------------------------------


def test_a_daily_run_reads_a_thirtieth_oldest_first() -> None:
    # 60 archives of 1,000 bytes, last checked a day ago or longer: 2,000 bytes a day.
    backups = [
        manifest(NOW - timedelta(days=40), checked=NOW - DAY - timedelta(hours=n))
        for n in range(60)
    ]
    random.Random(3).shuffle(backups)

    share = choose_share(backups, days=30, now=NOW)

    assert share.pace == DAY
    assert share.wanted_bytes == 2000
    assert share.candidates == 60 and share.total_bytes == 60_000
    oldest_first = sorted(backups, key=last_read)
    assert list(share.chosen) == oldest_first[:2]


def test_a_first_check_counts_one_day() -> None:
    backups = [manifest(NOW - timedelta(hours=n + 1)) for n in range(30)]
    share = choose_share(backups, days=30, now=NOW)
    assert share.pace == DAY
    assert len(share.chosen) == 1
    assert share.chosen[0] == min(backups, key=last_read)


def test_a_run_soon_after_another_reads_one_archive_at_least() -> None:
    backups = [manifest(NOW - timedelta(days=3), checked=NOW - timedelta(minutes=5))] + [
        manifest(NOW - timedelta(days=2), size=10**9) for _ in range(5)
    ]
    share = choose_share(backups, days=30, now=NOW)
    assert share.pace == timedelta(minutes=5)
    assert len(share.chosen) == 1


def test_overdue_archives_are_read_whatever_the_share() -> None:
    # Checks paused for a while: 5 archives would pass 30 days before tomorrow's run.
    overdue = [
        manifest(NOW - timedelta(days=60), checked=NOW - timedelta(days=29, hours=n))
        for n in range(5)
    ]
    recent = [
        manifest(NOW - timedelta(days=n + 1), checked=NOW - timedelta(hours=1)) for n in range(20)
    ]
    share = choose_share([*recent, *overdue], days=30, now=NOW)
    assert {m.backup_id for m in share.chosen} == {m.backup_id for m in overdue}


def test_all_reads_every_completed_backup_and_nothing_else() -> None:
    good = [manifest(NOW - timedelta(days=n + 1)) for n in range(5)]
    others = [
        manifest(NOW, status=status)
        for status in (BackupStatus.RUNNING, BackupStatus.FAILED, BackupStatus.CORRUPT)
    ]
    share = choose_share([*good, *others], days=30, now=NOW, every=True)
    assert sorted(share.chosen, key=last_read) == sorted(good, key=last_read)
    assert share.candidates == 5


@pytest.mark.parametrize(("days", "hours"), [(30, 24), (7, 24), (30, 6), (30, 24 * 7)])
def test_every_archive_is_reread_within_the_window(days: int, hours: int) -> None:
    """Two hundred days of a backup a day (of random sizes) and retention keeping 40 of them,
    checked every `hours` hours: no archive ever goes longer than `days` days unread."""
    rng = random.Random(days * 1000 + hours)
    window = timedelta(days=days)
    pace = timedelta(hours=hours)
    start = NOW - timedelta(days=200)
    backups: list[Manifest] = [manifest(start, size=rng.randint(1, 10**6))]
    clock = start
    next_backup = start + DAY
    reads = 0
    while clock < NOW:
        clock += pace
        while next_backup <= clock:
            backups.append(manifest(next_backup, size=rng.randint(1, 10**6)))
            backups = backups[-40:]
            next_backup += DAY
        # At each run, no archive has gone unread for longer than the window: the run reads
        # each one that has reached it, and so every archive is read again within it.
        assert max(clock - last_read(m) for m in backups) <= window
        share = choose_share(backups, days=days, now=clock)
        chosen = {m.backup_id for m in share.chosen}
        reads += len(chosen)
        backups = [
            m.model_copy(update={"checked_at": clock}) if m.backup_id in chosen else m
            for m in backups
        ]
    # And not by reading everything each time: about 40 archives per window, plus new ones.
    runs = (NOW - start) / pace
    assert reads < runs * 40 * (pace / window) * 1.5 + runs


# --- re-reading -------------------------------------------------------------------------------


def test_a_flipped_byte_marks_the_backup_corrupt(repo: BackupRepository) -> None:
    backup = store(repo, NOW)
    flip_a_byte(repo, backup)

    finding = check_archive(repo, backup)

    assert finding is not None and finding.error is not None
    assert "does not match" in finding.error
    stored = repo.read(SERVER, backup.backup_id)
    assert stored is not None
    assert stored.status is BackupStatus.CORRUPT
    assert stored.error == finding.error
    assert stored.checked_at is None  # the last time it matched: never


def test_a_missing_archive_marks_the_backup_corrupt(repo: BackupRepository) -> None:
    backup = store(repo, NOW)
    repo.archive_path(backup).unlink()
    finding = check_archive(repo, backup)
    assert finding is not None and "missing" in (finding.error or "")
    stored = repo.read(SERVER, backup.backup_id)
    assert stored is not None and stored.status is BackupStatus.CORRUPT


def test_a_matching_archive_gets_its_check_time(repo: BackupRepository) -> None:
    backup = store(repo, NOW - timedelta(days=3))
    before = datetime.now(UTC)
    finding = check_archive(repo, backup)
    assert finding is not None and finding.error is None
    stored = repo.read(SERVER, backup.backup_id)
    assert stored is not None and stored.status is BackupStatus.COMPLETED
    assert stored.checked_at is not None and stored.checked_at >= before
    assert stored.model_copy(update={"checked_at": None}) == backup


def test_a_backup_removed_during_its_check_stays_removed(
    repo: BackupRepository, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Retention forgets the backup while its archive is being read: the check must not write
    its manifest back (a completed backup without an archive, or a corrupt one)."""
    backup = store(repo, NOW)
    verify = BackupRepository.verify

    def verify_then_forget(self: BackupRepository, manifest: Manifest) -> object:
        repo.forget(manifest)
        return verify(self, manifest)

    monkeypatch.setattr(BackupRepository, "verify", verify_then_forget)
    assert check_archive(repo, backup) is None
    assert repo.read(SERVER, backup.backup_id) is None
    assert list(repo.server_dir(SERVER).iterdir()) == []


def test_an_archive_this_host_cannot_read_is_skipped_not_corrupt(
    repo: BackupRepository, monkeypatch: pytest.MonkeyPatch
) -> None:
    backup = store(repo, NOW).model_copy(update={"compression": "zstd"})
    backup = backup.model_copy(
        update={"archive": BackupRepository.archive_name(backup.backup_id, "zstd")}
    )
    monkeypatch.setattr(tasks.archive_checks, "readable_codecs", lambda: {"none", "gzip"})
    report = check_share(repo, [backup])
    assert report.skipped == [backup]
    assert report.corrupt == [] and report.matched == []


def test_the_check_job_fails_naming_the_corrupt_backup(
    offline: Offline, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = BackupRepository(offline.tmp_path / "backups")
    good = store(repo, NOW - timedelta(days=2))
    bad = store(repo, NOW - timedelta(days=1))
    other_server = store(repo, NOW - timedelta(days=1), server_id=uuid4())
    flip_a_byte(repo, bad)
    published: list[dict[str, object]] = []
    monkeypatch.setattr("flows.check.publish_result", lambda r: published.append(r) or r)

    with pytest.raises(ArchiveInvalid) as raised:
        check.fn(all_archives=True, server_id=SERVER, user_id="cli:root")

    message = str(raised.value)
    assert f"backup {bad.backup_id} of server {SERVER}" in message
    assert message.startswith("1 corrupt of 2 archives re-read")
    assert str(good.backup_id) not in message
    [result] = published
    assert result["checked"] == 2 and result["matched"] == 1
    [entry] = result["corrupt"]  # type: ignore[misc]
    assert entry["serverId"] == str(SERVER) and entry["backupId"] == str(bad.backup_id)
    assert "does not match" in entry["error"]
    stored = repo.read(SERVER, bad.backup_id)
    assert stored is not None and stored.status is BackupStatus.CORRUPT
    # One announcement for the notifications, naming the bad one only.
    [(kind, report)] = offline.announced
    assert kind == "corrupt" and [f.manifest.backup_id for f in report.corrupt] == [bad.backup_id]
    # Only the server asked for: the other's backup was not read.
    assert repo.read(other_server.server_id, other_server.backup_id) == other_server
    assert [p for p, _ in offline.progress.milestones] == [10, 20, 90]


def test_a_check_that_finds_nothing_wrong_completes(offline: Offline) -> None:
    repo = BackupRepository(offline.tmp_path / "backups")
    store(repo, NOW - timedelta(days=2))
    result = check.fn()
    assert result["checked"] == result["matched"] == 1
    assert result["corrupt"] == []
    assert [p for p, _ in offline.progress.milestones] == [10, 20, 90, 100]


# --- the metrics' counts ----------------------------------------------------------------------


def test_corrupt_backups_are_counted_per_server_and_read_again_only_when_changed(
    repo: BackupRepository, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    other = uuid4()
    bad = store(repo, NOW)
    store(repo, NOW)
    store(repo, NOW, server_id=other)
    flip_a_byte(repo, bad)
    check_archive(repo, bad)
    second = BackupRepository(tmp_path / "elsewhere")
    moved = store(second, NOW)
    second.archive_path(moved).unlink()
    check_archive(second, moved)
    counter = CorruptCounter()

    assert counter.counts([repo.root, second.root]) == {SERVER: 2, other: 0}

    # Unchanged directories (older than a second) are not surveyed again.
    old = (NOW - timedelta(days=1)).timestamp()
    for directory in (repo.server_dir(SERVER), repo.server_dir(other), second.server_dir(SERVER)):
        os.utime(directory, (old, old))
    assert counter.counts([repo.root, second.root]) == {SERVER: 2, other: 0}
    surveyed: list[UUID] = []
    survey = BackupRepository.survey
    monkeypatch.setattr(
        BackupRepository,
        "survey",
        lambda self, server_id: surveyed.append(server_id) or survey(self, server_id),
    )
    assert counter.counts([repo.root, second.root]) == {SERVER: 2, other: 0}
    assert surveyed == []
    bad_other = store(repo, NOW, server_id=other)
    flip_a_byte(repo, bad_other)
    check_archive(repo, bad_other)
    assert counter.counts([repo.root]) == {SERVER: 1, other: 1}
    assert surveyed == [other]


# --- the schedule and its settings ------------------------------------------------------------


def test_the_check_runs_daily_at_four_and_its_runs_name_their_job_type() -> None:
    want = check_schedule(CheckSettings())
    assert want is not None
    assert want.slug == SCHEDULE_SLUG
    assert want.schedule == CronSchedule(cron="0 4 * * *", timezone="UTC")
    assert want.parameters == {"job_type": "check:archives"}
    assert CheckSettings().days == 30


def test_the_check_schedule_is_configurable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MM_CHECK_CRON", "0 */6 * * *")
    monkeypatch.setenv("MM_CHECK_TIMEZONE", "Europe/Paris")
    want = check_schedule(CheckSettings())
    assert want is not None
    assert want.schedule == CronSchedule(cron="0 */6 * * *", timezone="Europe/Paris")
    monkeypatch.setenv("MM_CHECK_CRON", " ")
    assert check_schedule(CheckSettings()) is None


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("MM_CHECK_CRON", "daily", "not a valid cron expression"),
        ("MM_CHECK_TIMEZONE", "Moon/Tycho", "not an IANA time zone"),
    ],
)
def test_bad_check_schedules_are_refused_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, message: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ValueError, match=f"{variable}: .*{message}"):
        check_checks(CheckSettings())


def test_a_window_under_a_day_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MM_CHECK_DAYS", "0")
    with pytest.raises(SettingsError, match="MM_CHECK_DAYS"):
        read_settings()
