"""Checks of the stored archives, as restic's `check --read-data-subset`: which archives a run
re-reads, re-reading them, what it records, and how many corrupt ones each server has.

A run (flows/check.py) re-reads a share of this host's completed backups (MM_BACKUP_ROOT), those
read longest ago first, so that each is re-read within MM_CHECK_DAYS (N) days at the pace the
checks run (the formula: `choose_share`). An archive that does not match its manifest
(`BackupRepository.verify`: missing, another size or sha256, unreadable by tar) is marked
`corrupt` with the error, and stays so: retention neither counts nor deletes it, the check job
fails naming it, and `/metrics` counts it (`CorruptCounter`). One that matches gets `checked_at`.

Both are written under the repository's lock (`BackupRepository.exclusive`) after the manifest
is read again, so a backup that retention removed meanwhile stays removed. An archive this host
could not read for another reason (an I/O error) is reported and left as it is; one in a codec
this host cannot read (zstd without zstd installed) is skipped, since tar's failure to list it
would say nothing about its bytes.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import UUID

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.events import emit_event

from tasks.backup_facts import FactsReader
from tasks.core.errors import ArchiveInvalid
from tasks.core.settings import get_settings
from tasks.notifications import BACKUPS_CORRUPT, SERVER_RESOURCE
from tasks.progress import Progress
from tasks.repository import BackupRepository, BackupStatus, Manifest, readable_codecs, utcnow

#: The pace a first check assumes (no archive checked yet), and the least time it expects
#: until the next run: a daily schedule's.
DAY = timedelta(days=1)


def _aware(moment: datetime) -> datetime:
    # A naive time (a hand-made manifest) counts as UTC, as retention counts it.
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def last_read(manifest: Manifest) -> datetime:
    """When the archive was last read whole and found matching: by a check, or by its backup."""
    return _aware(manifest.checked_at or manifest.finished_at or manifest.started_at)


@dataclass(frozen=True)
class Share:
    """The archives one run re-reads, and what they were chosen from."""

    #: Oldest read first.
    chosen: tuple[Manifest, ...]
    #: Completed backups there were to choose from, and their bytes.
    candidates: int
    total_bytes: int
    #: Time since the previous check: the pace the share is computed for.
    pace: timedelta
    #: Bytes the pace asks for (more are read for overdue archives, or the one at least).
    wanted_bytes: int


def choose_share(
    manifests: Iterable[Manifest], *, days: int, now: datetime, every: bool = False
) -> Share:
    """The archives a run re-reads now so that each is re-read within `days` days.

    Candidates are the completed backups, oldest `last_read` first. The pace P is the time since
    the previous check (the newest `checked_at`, at most `days`; a first check counts one day).
    A run takes candidates from the front until it has at least `ceil(B * P / days)` bytes, B
    being all the candidates' bytes (at least one archive), and also each one that would be
    `days` past its last read by the next run, expected after P again but at least a day.
    `every`: all candidates.
    """
    window = timedelta(days=days)
    queue = sorted(
        (m for m in manifests if m.status is BackupStatus.COMPLETED),
        key=lambda m: (last_read(m), str(m.backup_id)),
    )
    checked = [_aware(m.checked_at) for m in queue if m.checked_at is not None]
    pace = DAY if not checked else now - max(checked)
    pace = min(max(pace, timedelta(0)), window)
    total = sum(m.size or 0 for m in queue)
    wanted = math.ceil(total * (pace / window))
    # Read now whatever the next run would find older than the window.
    overdue_before = now + max(pace, DAY) - window
    chosen: list[Manifest] = []
    read = 0
    for manifest in queue:
        if every or not chosen or read < wanted or last_read(manifest) <= overdue_before:
            chosen.append(manifest)
            read += manifest.size or 0
        else:
            break  # oldest first: the rest were read later still
    return Share(tuple(chosen), len(queue), total, pace, wanted)


@dataclass(frozen=True)
class Finding:
    """One archive re-read: None when it matched, else what was wrong."""

    manifest: Manifest
    error: str | None = None

    def entry(self) -> dict[str, str | None]:
        return {
            "serverId": str(self.manifest.server_id),
            "backupId": str(self.manifest.backup_id),
            "error": self.error,
        }


@dataclass
class CheckReport:
    """What one run found."""

    matched: list[Finding] = field(default_factory=list)
    #: Marked `corrupt` in their manifests by this run.
    corrupt: list[Finding] = field(default_factory=list)
    #: Not read for another reason (an I/O error): reported, their manifests left as they are.
    unreadable: list[Finding] = field(default_factory=list)
    #: In a codec this host cannot read: not re-read.
    skipped: list[Manifest] = field(default_factory=list)
    #: Removed by retention while the run went on.
    gone: int = 0
    bytes_read: int = 0

    def summary(self) -> str:
        """What failed, one backup after another, for the job's failure message."""
        bad = [*self.corrupt, *self.unreadable]
        kinds = ", ".join(
            f"{len(found)} {word}"
            for found, word in ((self.corrupt, "corrupt"), (self.unreadable, "unreadable"))
            if found
        )
        listed = "; ".join(
            f"backup {f.manifest.backup_id} of server {f.manifest.server_id}: {f.error}"
            for f in bad
        )
        return f"{kinds} of {len(bad) + len(self.matched)} archives re-read: {listed}"


def check_archive(repository: BackupRepository, manifest: Manifest) -> Finding | None:
    """Re-read one archive against its manifest and record the outcome in it.

    Returns None when the backup is no longer a completed one (removed, or changed meanwhile):
    nothing is recorded then. Raises `OSError` when the archive could not be read for a reason
    that says nothing of its bytes.
    """
    error: str | None = None
    try:
        # Size and sha256 of the stored bytes (and, for a plain archive, tar's listing): no
        # identity is needed, nothing is decrypted.
        repository.verify(manifest)
    except ArchiveInvalid as exc:
        # Said of this backup already: its manifest and the job's list name it.
        error = str(exc).removeprefix(f"backup {manifest.backup_id}: ")
    with repository.exclusive():
        try:
            current = repository.read(manifest.server_id, manifest.backup_id)
        except ValueError:
            return None  # no longer a manifest of ours: not ours to rewrite
        if (
            current is None
            or current.status is not BackupStatus.COMPLETED
            or current.sha256 != manifest.sha256
        ):
            return None
        if error is None:
            repository.save(current.model_copy(update={"checked_at": utcnow()}))
        else:
            repository.save(
                current.model_copy(update={"status": BackupStatus.CORRUPT, "error": error})
            )
    return Finding(current, error)


def check_share(
    repository: BackupRepository,
    chosen: Sequence[Manifest],
    on_progress: Progress | None = None,
) -> CheckReport:
    """Re-read each chosen archive in turn (`check_archive`); progress from 20 to 90 % by bytes."""
    report = CheckReport()
    readable = readable_codecs()
    total = sum(m.size or 0 for m in chosen) or 1
    for manifest in chosen:
        if not manifest.encrypted and manifest.compression not in readable:
            report.skipped.append(manifest)
            continue
        try:
            finding = check_archive(repository, manifest)
        except OSError as exc:
            report.unreadable.append(Finding(manifest, f"cannot read it: {exc}"))
            continue
        report.bytes_read += manifest.size or 0
        if finding is None:
            report.gone += 1
        elif finding.error is None:
            report.matched.append(finding)
        else:
            report.corrupt.append(finding)
        if on_progress is not None:
            on_progress.between(20, 90, report.bytes_read, total, "re-reading archives")
    return report


def repository() -> BackupRepository:
    return BackupRepository(get_settings().paths.backup_root)


@task(name="choose archives", cache_policy=NO_CACHE)
def choose_archives(server_id: UUID | None = None, every: bool = False) -> Share:
    """This run's share of the repository's completed backups (one server's, if given)."""
    repo = repository()
    servers = [server_id] if server_id is not None else repo.server_ids()
    manifests = [m for s in servers for m in repo.survey(s).manifests]
    share = choose_share(manifests, days=get_settings().check.days, now=utcnow(), every=every)
    get_run_logger().info(
        "re-reading %d of %d archives (%d of %d bytes; %s since the last check)",
        len(share.chosen),
        share.candidates,
        sum(m.size or 0 for m in share.chosen),
        share.total_bytes,
        share.pace,
    )
    return share


@task(name="re-read archives", cache_policy=NO_CACHE)
def reread_archives(share: Share, progress: Progress) -> CheckReport:
    """Re-read the chosen archives and mark each `corrupt` that does not match its manifest."""
    logger = get_run_logger()
    report = check_share(repository(), share.chosen, progress)
    for finding in report.corrupt:
        logger.error(
            "backup %s of server %s is corrupt: %s",
            finding.manifest.backup_id,
            finding.manifest.server_id,
            finding.error,
        )
    for finding in report.unreadable:
        logger.error("backup %s: %s", finding.manifest.backup_id, finding.error)
    for manifest in report.skipped:
        logger.warning(
            "backup %s not re-read: this host cannot read %s archives (install %s)",
            manifest.backup_id,
            manifest.compression,
            manifest.compression,
        )
    return report


class CorruptCounter:
    """Corrupt backups per server in some repositories; unchanged servers are not surveyed
    again (`tasks.backup_facts.FactsReader`, which /metrics reads with the last backups)."""

    def __init__(self) -> None:
        self._reader = FactsReader()

    def counts(self, roots: Iterable[Path]) -> dict[UUID, int]:
        return {server_id: f.corrupt for server_id, f in self._reader.facts(roots).items()}


def corrupt_event(report: CheckReport, run_id: UUID | None) -> dict[str, Any]:
    """The keyword arguments of the run's one `BACKUPS_CORRUPT` event: the run as resource,
    each server with a bad archive related (per-server targets match it), and the text."""
    bad = [*report.corrupt, *report.unreadable]
    servers = {str(f.manifest.server_id): f.manifest.server_name for f in bad}
    lines = [
        f"- {f.manifest.server_name}: backup {f.manifest.backup_id}"
        f" of {_aware(f.manifest.started_at):%Y-%m-%d %H:%M} UTC: {f.error}"
        for f in bad
    ]
    return {
        "event": BACKUPS_CORRUPT,
        "resource": {
            "prefect.resource.id": f"medicine-man.check.{run_id or 'offline'}",
            "prefect.resource.name": "check:archives",
        },
        "related": [
            {
                "prefect.resource.id": f"{SERVER_RESOURCE}{server_id}",
                "prefect.resource.name": name,
                "prefect.resource.role": "server",
            }
            for server_id, name in sorted(servers.items())
        ],
        "payload": {
            "count": len(bad),
            "servers": ", ".join(sorted(servers.values())),
            "text": "\n".join(lines),
        },
    }


@task(name="report corrupt archives", cache_policy=NO_CACHE)
def announce_corrupt(report: CheckReport, run_id: UUID | None) -> None:
    """One event for the run's corrupt and unreadable archives: one message per target."""
    emit_event(**corrupt_event(report, run_id))
