"""The archive retention policy: many dated backups in, exactly the expected ones kept."""

from __future__ import annotations

import random
from collections.abc import Iterable
from datetime import UTC, date, datetime, timedelta
from uuid import UUID, uuid4
from zoneinfo import ZoneInfo

import pytest

from tasks.archive_retention import (
    NEWEST,
    KeepPolicy,
    Plan,
    keep_policy,
    plan_retention,
)
from tasks.core.settings import KeepSettings, SettingsError, read_settings
from tasks.repository import BackupRepository, BackupStatus, Manifest

SERVER = UUID("0d4c2b1a-6f7e-4d3c-9b2a-1c0d9e8f7a61")


def backup(
    at: datetime, status: BackupStatus = BackupStatus.COMPLETED, backup_id: UUID | None = None
) -> Manifest:
    backup_id = backup_id or uuid4()
    return Manifest(
        backup_id=backup_id,
        server_id=SERVER,
        server_name="web1",
        job_type="backup:scheduled",
        paths=["/srv"],
        archive=BackupRepository.archive_name(backup_id, "none"),
        started_at=at,
        status=status,
    )


def daily(first: date, last: date, hour: int = 2) -> list[Manifest]:
    """One completed backup a day at `hour`:00 UTC, from `first` to `last` inclusive."""
    days = (last - first).days + 1
    return [
        backup(datetime(first.year, first.month, first.day, hour, tzinfo=UTC) + timedelta(days=n))
        for n in range(days)
    ]


def kept_times(result: Plan) -> set[datetime]:
    return {k.manifest.started_at for k in result.keep}


def at(day: str, hour: int = 2, minute: int = 0) -> datetime:
    return datetime.fromisoformat(day).replace(hour=hour, minute=minute, tzinfo=UTC)


def test_half_a_year_of_daily_backups_under_the_default_policy() -> None:
    """181 daily backups (1 January to 30 June 2025, a Monday), keep 7 / 7 / 4 / 6."""
    backups = daily(date(2025, 1, 1), date(2025, 6, 30))
    random.Random(1).shuffle(backups)  # the order they come in does not matter

    result = plan_retention(backups, KeepPolicy())

    last_week = {at(f"2025-06-{d}") for d in range(24, 31)}  # last 7 and daily 7
    weekly = {at("2025-06-30"), at("2025-06-29"), at("2025-06-22"), at("2025-06-15")}
    monthly = {
        at("2025-06-30"),
        at("2025-05-31"),
        at("2025-04-30"),
        at("2025-03-31"),
        at("2025-02-28"),
        at("2025-01-31"),
    }
    assert kept_times(result) == last_week | weekly | monthly
    assert len(result.keep) == 14
    assert len(result.forget) == 181 - 14
    assert result.untouched == ()
    by_time = {k.manifest.started_at: k.reasons for k in result.keep}
    assert by_time[at("2025-06-30")] == (
        "last 1",
        "daily 2025-06-30",
        "weekly 2025-W27",
        "monthly 2025-06",
    )
    assert by_time[at("2025-06-15")] == ("weekly 2025-W24",)
    assert by_time[at("2025-01-31")] == ("monthly 2025-01",)


def test_several_backups_a_day_and_a_gap() -> None:
    """The newest of a day stands for the day; `last` counts backups, not days."""
    backups = [
        *daily(date(2025, 3, 1), date(2025, 3, 31)),
        backup(at("2025-03-31", 10)),
        backup(at("2025-03-31", 14)),
        backup(at("2025-02-10")),
        backup(at("2025-02-20")),
    ]
    result = plan_retention(backups, KeepPolicy(last=2, daily=3, weekly=2, monthly=2))

    # 31 March 2025 is a Monday (W14); the 30th closes W13.
    assert [(k.manifest.started_at, k.reasons) for k in result.keep] == [
        (
            at("2025-03-31", 14),
            ("last 1", "daily 2025-03-31", "weekly 2025-W14", "monthly 2025-03"),
        ),
        (at("2025-03-31", 10), ("last 2",)),
        (at("2025-03-30"), ("daily 2025-03-30", "weekly 2025-W13")),
        (at("2025-03-29"), ("daily 2025-03-29",)),
        (at("2025-02-20"), ("monthly 2025-02",)),
    ]
    assert len(result.forget) == len(backups) - 5
    assert at("2025-03-31") in {m.started_at for m in result.forget}


def test_days_without_backups_use_up_nothing() -> None:
    backups = [backup(at("2025-01-01")), backup(at("2025-01-10")), backup(at("2025-01-20"))]
    result = plan_retention(backups, KeepPolicy(last=0, daily=3, weekly=0, monthly=0))
    assert len(result.keep) == 3
    assert result.forget == ()


def test_weeks_are_iso_weeks_across_the_new_year() -> None:
    """Monday 30 December 2024 is in 2025-W01, like Sunday 5 January 2025."""
    backups = [backup(at("2024-12-29")), backup(at("2024-12-30")), backup(at("2025-01-05"))]
    result = plan_retention(backups, KeepPolicy(last=0, daily=0, weekly=2, monthly=0))
    assert [(k.manifest.started_at, k.reasons) for k in result.keep] == [
        (at("2025-01-05"), ("weekly 2025-W01",)),
        (at("2024-12-29"), ("weekly 2024-W52",)),
    ]


@pytest.mark.parametrize(
    ("zone", "expected"),
    [
        # In UTC both evening backups are on the 30th: the 29th is the second day.
        ("UTC", {at("2025-03-30", 23, 30), at("2025-03-29", 20)}),
        # In Berlin (UTC+2 since that night) 23:30 UTC is already 01:30 on the 31st.
        ("Europe/Berlin", {at("2025-03-30", 23, 30), at("2025-03-30", 20)}),
    ],
)
def test_days_are_the_servers_days(zone: str, expected: set[datetime]) -> None:
    backups = [
        backup(at("2025-03-29", 20)),
        backup(at("2025-03-30", 20)),
        backup(at("2025-03-30", 23, 30)),
    ]
    result = plan_retention(
        backups, KeepPolicy(last=0, daily=2, weekly=0, monthly=0), ZoneInfo(zone)
    )
    assert kept_times(result) == expected


def test_running_and_failed_backups_are_never_selected() -> None:
    running = backup(at("2025-03-31", 5), BackupStatus.RUNNING)
    failed = backup(at("2025-03-31", 4), BackupStatus.FAILED)
    old_failed = backup(at("2024-01-01"), BackupStatus.FAILED)
    old_running = backup(at("2024-01-02"), BackupStatus.RUNNING)
    completed = daily(date(2025, 3, 1), date(2025, 3, 31))

    result = plan_retention(
        [running, failed, old_failed, old_running, *completed],
        KeepPolicy(last=1, daily=0, weekly=0, monthly=0),
    )

    assert {m.backup_id for m in result.untouched} == {
        m.backup_id for m in (running, failed, old_failed, old_running)
    }
    # The newest *completed* backup is the one kept; failed and running ones count for nothing.
    assert kept_times(result) == {at("2025-03-31")}
    assert len(result.forget) == 30
    assert all(m.status is BackupStatus.COMPLETED for m in result.forget)


def test_a_policy_of_zeros_still_keeps_the_newest() -> None:
    backups = daily(date(2025, 3, 1), date(2025, 3, 10))
    result = plan_retention(backups, KeepPolicy(last=0, daily=0, weekly=0, monthly=0))
    assert [(k.manifest.started_at, k.reasons) for k in result.keep] == [
        (at("2025-03-10"), (NEWEST,))
    ]
    assert len(result.forget) == 9


def test_the_only_completed_backup_stays() -> None:
    only = backup(at("2020-01-01"))
    failures = [
        backup(at("2025-03-01") + timedelta(days=n), BackupStatus.FAILED) for n in range(20)
    ]
    for policy in (KeepPolicy(), KeepPolicy(0, 0, 0, 0), KeepPolicy(0, 0, 0, 1)):
        result = plan_retention([*failures, only], policy)
        assert [k.manifest for k in result.keep] == [only]
        assert result.forget == ()


def test_nothing_in_nothing_out() -> None:
    assert plan_retention([], KeepPolicy()) == Plan()


def test_equal_start_times_are_split_by_id() -> None:
    same = at("2025-03-01")
    ids = sorted((uuid4() for _ in range(5)), key=str)
    backups = [backup(same, backup_id=i) for i in ids]
    result = plan_retention(reversed(backups), KeepPolicy(last=2, daily=0, weekly=0, monthly=0))
    assert [k.manifest.backup_id for k in result.keep] == [ids[-1], ids[-2]]


def test_a_naive_start_time_counts_as_utc() -> None:
    naive = backup(datetime(2025, 3, 2, 23, 30))
    aware = backup(at("2025-03-02", 12))
    result = plan_retention([naive, aware], KeepPolicy(last=0, daily=1, weekly=0, monthly=0))
    assert [k.manifest for k in result.keep] == [naive]


def reference(backups: Iterable[Manifest], policy: KeepPolicy) -> set[UUID]:
    """The rule as the docs state it, written another way: group by period, take the newest."""
    done = sorted(
        (m for m in backups if m.status is BackupStatus.COMPLETED),
        key=lambda m: (m.started_at, str(m.backup_id)),
        reverse=True,
    )
    keep = {m.backup_id for m in done[: policy.last]}
    periods = {
        "daily": (policy.daily, lambda t: t.date()),
        "weekly": (policy.weekly, lambda t: t.isocalendar()[:2]),
        "monthly": (policy.monthly, lambda t: (t.year, t.month)),
    }
    for count, period_of in periods.values():
        newest: dict[object, Manifest] = {}
        for m in done:
            newest.setdefault(period_of(m.started_at), m)
        keep.update(m.backup_id for m in list(newest.values())[:count])
    if done and not keep:
        keep.add(done[0].backup_id)
    return keep


@pytest.mark.parametrize("seed", range(200))
def test_random_histories_match_the_reference(seed: int) -> None:
    rng = random.Random(seed)
    start = datetime(2024, 1, 1, tzinfo=UTC)
    statuses = [BackupStatus.COMPLETED] * 8 + [BackupStatus.FAILED, BackupStatus.RUNNING]
    backups = [
        backup(start + timedelta(minutes=rng.randrange(0, 400 * 24 * 60)), rng.choice(statuses))
        for _ in range(rng.randrange(0, 120))
    ]
    policy = KeepPolicy(*(rng.randrange(0, 9) for _ in range(4)))

    result = plan_retention(backups, policy)

    completed = {m.backup_id for m in backups if m.status is BackupStatus.COMPLETED}
    kept = {k.manifest.backup_id for k in result.keep}
    forgotten = {m.backup_id for m in result.forget}
    assert kept == reference(backups, policy)
    assert kept | forgotten == completed and not kept & forgotten
    assert len(result.untouched) == len(backups) - len(completed)
    assert len(kept) <= max(1, policy.last + policy.daily + policy.weekly + policy.monthly)
    if completed:
        newest = max(
            (m for m in backups if m.backup_id in completed),
            key=lambda m: (m.started_at, str(m.backup_id)),
        )
        assert newest.backup_id in kept


def test_negative_counts_are_refused() -> None:
    with pytest.raises(ValueError, match="keep weekly must be 0 or more, not -1"):
        KeepPolicy(weekly=-1)


def test_settings_come_from_mm_keep_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    assert keep_policy(KeepSettings()) == KeepPolicy(7, 7, 4, 6)
    monkeypatch.setenv("MM_KEEP_LAST", "3")
    monkeypatch.setenv("MM_KEEP_MONTHLY", "12")
    assert keep_policy(KeepSettings()) == KeepPolicy(last=3, daily=7, weekly=4, monthly=12)
    monkeypatch.setenv("MM_KEEP_DAILY", "-2")
    with pytest.raises(SettingsError, match="MM_KEEP_DAILY: Input should be greater than or equal"):
        read_settings()


def test_corrupt_and_missing_backups_are_neither_kept_nor_forgotten() -> None:
    """The two newest backups are corrupt (a check found them so) and missing (their archive
    is gone, not yet checked): neither uses up a `last` slot, nor is deleted."""
    good = daily(date(2025, 3, 1), date(2025, 3, 8))
    corrupt = backup(at("2025-03-10"), BackupStatus.CORRUPT)
    missing = backup(at("2025-03-09"))

    result = plan_retention(
        [*good, corrupt, missing],
        KeepPolicy(last=2, daily=0, weekly=0, monthly=0),
        missing={missing.backup_id},
    )

    assert kept_times(result) == {at("2025-03-08"), at("2025-03-07")}
    assert {m.backup_id for m in result.untouched} == {corrupt.backup_id, missing.backup_id}
    assert len(result.forget) == 6
    assert corrupt not in result.forget and missing not in result.forget


def test_the_last_good_backup_stays_when_newer_ones_are_corrupt_or_missing() -> None:
    """With a policy of zeros only the newest backup stays: that must be the newest good one,
    not a newer one whose archive is corrupt or gone."""
    last_good = backup(at("2025-03-01"))
    older = backup(at("2025-02-01"))
    corrupt = [backup(at("2025-03-02") + timedelta(days=n), BackupStatus.CORRUPT) for n in range(3)]
    gone = [backup(at("2025-03-10") + timedelta(days=n)) for n in range(3)]

    result = plan_retention(
        [older, last_good, *corrupt, *gone],
        KeepPolicy(0, 0, 0, 0),
        missing={m.backup_id for m in gone},
    )

    assert [(k.manifest, k.reasons) for k in result.keep] == [(last_good, (NEWEST,))]
    assert result.forget == (older,)


def test_nothing_good_means_nothing_deleted() -> None:
    corrupt = backup(at("2025-03-02"), BackupStatus.CORRUPT)
    gone = backup(at("2025-03-01"))
    result = plan_retention([corrupt, gone], KeepPolicy(0, 0, 0, 0), missing={gone.backup_id})
    assert result.keep == () and result.forget == ()
    assert len(result.untouched) == 2
