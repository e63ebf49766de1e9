"""The backup gauges of /metrics: last completed backup per server from the manifests, the max
age of each scheduled server from the stale-backup rule, and series that go with their server."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path
from uuid import UUID, uuid4

from prometheus_client import REGISTRY

from api_shim.metrics import record_backups, record_max_ages
from tasks.backup_facts import FactsReader, facts_of
from tasks.core.inventory import Inventory
from tasks.repository import BackupRepository, BackupStatus, Manifest

T = datetime(2026, 6, 30, 4, tzinfo=UTC)


def manifest(server_id: UUID, finished: datetime, status: BackupStatus, size: int = 10) -> Manifest:
    backup_id = uuid4()
    return Manifest(
        backup_id=backup_id,
        server_id=server_id,
        server_name="from-manifest",
        job_type="backup:manual",
        paths=["/srv"],
        archive=BackupRepository.archive_name(backup_id, "none"),
        started_at=finished - timedelta(seconds=90),
        finished_at=finished,
        size=size,
        status=status,
    )


def test_the_last_completed_backup_is_the_newest_completed_one() -> None:
    server = uuid4()
    facts = facts_of(
        [
            manifest(server, T, BackupStatus.COMPLETED, size=1),
            manifest(server, T + timedelta(hours=2), BackupStatus.FAILED),
            manifest(server, T + timedelta(hours=3), BackupStatus.CORRUPT),
            manifest(server, T + timedelta(hours=1), BackupStatus.COMPLETED, size=7),
        ]
    )
    assert facts.corrupt == 1
    assert facts.last is not None
    assert (facts.last.finished_at, facts.last.size, facts.last.duration) == (
        T + timedelta(hours=1), 7, 90.0
    )  # fmt: skip
    assert facts_of([manifest(server, T, BackupStatus.FAILED)]).last is None


def test_two_repositories_of_one_server_merge(tmp_path: Path) -> None:
    server = uuid4()
    first, second = BackupRepository(tmp_path / "a"), BackupRepository(tmp_path / "b")
    first.save(manifest(server, T, BackupStatus.COMPLETED))
    second.save(manifest(server, T + timedelta(days=1), BackupStatus.COMPLETED, size=3))
    second.save(manifest(server, T, BackupStatus.CORRUPT))
    facts = FactsReader().facts([first.root, second.root])[server]
    assert facts.corrupt == 1 and facts.last is not None and facts.last.size == 3


def sample(name: str, **labels: str) -> float | None:
    return REGISTRY.get_sample_value(name, labels)


def test_gauges_follow_the_manifests_and_the_inventory(tmp_path: Path) -> None:
    done, never, unscheduled = uuid4(), uuid4(), uuid4()
    repo = BackupRepository(tmp_path / "backups")
    repo.save(manifest(done, T, BackupStatus.COMPLETED, size=4096))
    inventory = Inventory.model_validate(
        {
            "servers": [
                {"id": str(i), "name": name, "host": "h", "username": "u",
                 "private_key_file": "/k", "backup": {"paths": ["/srv"], **schedule}}
                for i, name, schedule in [
                    (done, "web-1", {"schedule": "0 3 * * *"}),
                    (never, "db-1", {"schedule": "*/5 * * * *"}),
                    (unscheduled, "cold", {}),
                ]
            ]
        }
    )  # fmt: skip
    record_backups([repo.root], {s.id: s.name for s in inventory.servers})
    asyncio.run(record_max_ages(inventory, timedelta(seconds=60)))

    web = {"server_id": str(done), "server": "web-1"}
    assert sample("mm_backup_last_completed_timestamp_seconds", **web) == T.timestamp()
    assert sample("mm_backup_last_completed_size_bytes", **web) == 4096
    assert sample("mm_backup_last_completed_duration_seconds", **web) == 90
    assert sample("mm_backup_corrupt_archives", server_id=str(done)) == 0
    assert sample("mm_backup_max_age_seconds", **web) == 86400 + 60
    db = {"server_id": str(never), "server": "db-1"}
    # Never backed up: a max age and no last backup, which the alert rules look for.
    assert sample("mm_backup_max_age_seconds", **db) == 300 + 60
    assert sample("mm_backup_last_completed_timestamp_seconds", **db) is None
    assert sample("mm_backup_max_age_seconds", server_id=str(unscheduled), server="cold") is None

    # The server leaves the inventory and its backups go: so do its series. A name the
    # inventory does not know is the manifests'.
    repo.forget(repo.list(done)[0])
    other = uuid4()
    repo.save(manifest(other, T, BackupStatus.COMPLETED))
    record_backups([repo.root], {})
    asyncio.run(record_max_ages(Inventory(), timedelta(seconds=60)))
    assert sample("mm_backup_last_completed_timestamp_seconds", **web) is None
    assert sample("mm_backup_max_age_seconds", **db) is None
    assert (
        sample("mm_backup_last_completed_size_bytes", server_id=str(other), server="from-manifest")
        == 10
    )
