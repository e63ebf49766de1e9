"""What /metrics says of each server's stored backups, read from the repositories' manifests:
how many are corrupt, and the last completed one (when it finished, its size and duration).

`FactsReader` surveys a server's directory again only when its mtime changed: every manifest
write renames a file into it (tasks/atomic.py), so a scrape every 15 s costs a `stat` per
server while nothing changes. A directory that changed within the last second may change again
within the same tick of a coarse clock, so it is not remembered.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from uuid import UUID

from tasks.repository import BackupRepository, BackupStatus, Manifest


@dataclass(frozen=True)
class LastBackup:
    """The newest completed backup of a server (by when it finished)."""

    server_name: str
    finished_at: datetime
    #: Bytes of the stored archive (as written, after compression and encryption).
    size: int
    #: Seconds from its start to its end, as its manifest records them.
    duration: float


@dataclass(frozen=True)
class ServerFacts:
    """One server's backups in one or more repositories."""

    #: Backups a check found missing or not matching their manifests.
    corrupt: int = 0
    #: None: no completed backup (never backed up, or all failed, corrupt or removed).
    last: LastBackup | None = None

    def merge(self, other: ServerFacts) -> ServerFacts:
        """The facts of two repositories together (MM_BACKUP_ROOTS may hold one server twice)."""
        last = self.last
        if other.last is not None and (last is None or other.last.finished_at > last.finished_at):
            last = other.last
        return ServerFacts(self.corrupt + other.corrupt, last)


def _aware(moment: datetime) -> datetime:
    # A naive time (a hand-made manifest) counts as UTC, as retention counts it.
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def facts_of(manifests: Iterable[Manifest]) -> ServerFacts:
    """Corrupt ones and the last completed one among one server's manifests."""
    corrupt = 0
    last: LastBackup | None = None
    for manifest in manifests:
        if manifest.status is BackupStatus.CORRUPT:
            corrupt += 1
        elif manifest.status is BackupStatus.COMPLETED and manifest.finished_at is not None:
            finished = _aware(manifest.finished_at)
            if last is None or finished > last.finished_at:
                duration = (finished - _aware(manifest.started_at)).total_seconds()
                last = LastBackup(
                    manifest.server_name, finished, manifest.size or 0, max(duration, 0.0)
                )
    return ServerFacts(corrupt, last)


class FactsReader:
    """`ServerFacts` per server in some repositories, for `/metrics` at each scrape."""

    def __init__(self) -> None:
        self._seen: dict[Path, tuple[int, ServerFacts]] = {}

    def facts(self, roots: Iterable[Path]) -> dict[UUID, ServerFacts]:
        found: dict[UUID, ServerFacts] = {}
        seen: dict[Path, tuple[int, ServerFacts]] = {}
        for root in roots:
            repo = BackupRepository(root)
            for server_id in repo.server_ids():
                directory = repo.server_dir(server_id)
                try:
                    mtime = directory.stat().st_mtime_ns
                except FileNotFoundError:
                    continue
                cached = self._seen.get(directory)
                if cached is not None and cached[0] == mtime:
                    facts = cached[1]
                else:
                    facts = facts_of(repo.survey(server_id).manifests)
                if time.time_ns() - mtime > 1_000_000_000:
                    seen[directory] = (mtime, facts)
                found[server_id] = found[server_id].merge(facts) if server_id in found else facts
        self._seen = seen
        return found
