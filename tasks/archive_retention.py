"""Which backup archives of a server to keep: last N, daily, weekly, monthly.

Pure selection: manifests in, a plan out; nothing here reads or deletes a file (the maintenance
flow's `tasks.maintenance` does). The rules are restic's `forget --keep-last --keep-daily
--keep-weekly --keep-monthly`, applied to the server's good backups from newest to oldest:

- `last`: the newest `last` backups;
- `daily`: the newest backup of each of the last `daily` days that have a backup (a week
  without backups uses up no days);
- `weekly`: the same per ISO week (Monday to Sunday); `monthly`: per calendar month.

A backup kept by several rules counts for each of them. Days, weeks and months are those of the
server's time zone (its backup schedule's `timezone`), by the backup's start time.

Two safety rules come on top of any policy:
- only good backups are candidates: `completed` ones whose archive is in place (the caller says
  which are `missing`). `running` ones (in progress, or interrupted and due to be run again),
  `failed` and `corrupt` ones, and completed ones whose archive is missing are never selected
  for deletion, nor counted as kept: they use up no `last` or period slot;
- the newest good backup is always kept, so a server never loses its last good backup.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, tzinfo
from uuid import UUID

from tasks.core.settings import KeepSettings
from tasks.repository import BackupStatus, Manifest


def _week(t: datetime) -> str:
    year, week, _ = t.isocalendar()
    return f"{year}-W{week:02d}"


#: The rules that keep one backup per period: name, and the period of a local time as a label
#: (`2026-11-29`, `2026-W48`, `2026-11`).
PERIODS: tuple[tuple[str, Callable[[datetime], str]], ...] = (
    ("daily", lambda t: t.date().isoformat()),
    ("weekly", _week),
    ("monthly", lambda t: f"{t.year}-{t.month:02d}"),
)

#: Why the newest good backup stays when no rule kept it (a policy of all zeros).
NEWEST = "newest (always kept)"


@dataclass(frozen=True)
class KeepPolicy:
    """How many good backups of a server to keep, by rule; 0 turns a rule off."""

    last: int = 7
    daily: int = 7
    weekly: int = 4
    monthly: int = 6

    def __post_init__(self) -> None:
        for name in ("last", "daily", "weekly", "monthly"):
            if getattr(self, name) < 0:
                raise ValueError(f"keep {name} must be 0 or more, not {getattr(self, name)}")

    def describe(self) -> str:
        return f"last {self.last}, daily {self.daily}, weekly {self.weekly}, monthly {self.monthly}"


def keep_policy(settings: KeepSettings) -> KeepPolicy:
    """The default policy of every server: MM_KEEP_LAST, MM_KEEP_DAILY, and so on."""
    return KeepPolicy(
        last=settings.last, daily=settings.daily, weekly=settings.weekly, monthly=settings.monthly
    )


@dataclass(frozen=True)
class Kept:
    """A backup that stays, and the rules that keep it."""

    manifest: Manifest
    reasons: tuple[str, ...]


@dataclass(frozen=True)
class Plan:
    """What to do with one server's backups."""

    #: Completed backups that stay, newest first.
    keep: tuple[Kept, ...] = ()
    #: Completed backups to delete (archive and manifest), newest first.
    forget: tuple[Manifest, ...] = ()
    #: Backups that are not good (running, failed, corrupt, missing): never deleted here.
    untouched: tuple[Manifest, ...] = ()


def started(manifest: Manifest) -> datetime:
    """The backup's start time, aware (a naive time in a hand-made manifest counts as UTC)."""
    at = manifest.started_at
    return at if at.tzinfo is not None else at.replace(tzinfo=UTC)


def plan_retention(
    manifests: Iterable[Manifest],
    policy: KeepPolicy,
    tz: tzinfo = UTC,
    *,
    missing: Collection[UUID] = (),
) -> Plan:
    """Split one server's backups into those to keep and those to forget under `policy`.

    Args:
        manifests: the server's backups, in any order.
        tz: the time zone whose days, weeks and months the period rules count.
        missing: completed backups whose archive is not in place (`BackupRepository.present`).
    """
    everything = list(manifests)
    good = sorted(
        (
            m
            for m in everything
            if m.status is BackupStatus.COMPLETED and m.backup_id not in missing
        ),
        key=lambda m: (started(m), str(m.backup_id)),
        reverse=True,
    )
    left = {"daily": policy.daily, "weekly": policy.weekly, "monthly": policy.monthly}
    last_period: dict[str, str] = {}
    keep: list[Kept] = []
    forget: list[Manifest] = []
    for index, manifest in enumerate(good):
        local = started(manifest).astimezone(tz)
        reasons: list[str] = []
        if index < policy.last:
            reasons.append(f"last {index + 1}")
        for rule, period_of in PERIODS:
            period = period_of(local)
            if left[rule] > 0 and period != last_period.get(rule):
                last_period[rule] = period
                left[rule] -= 1
                reasons.append(f"{rule} {period}")
        if index == 0 and not reasons:
            reasons.append(NEWEST)
        if reasons:
            keep.append(Kept(manifest, tuple(reasons)))
        else:
            forget.append(manifest)
    candidates = {m.backup_id for m in good}
    untouched = tuple(m for m in everything if m.backup_id not in candidates)
    return Plan(keep=tuple(keep), forget=tuple(forget), untouched=untouched)
