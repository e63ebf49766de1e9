"""Tasks of the maintenance flow: job-record retention, then backup-archive retention.

Job records are cleaned by `tasks.job_records` (the code `POST /api/jobs/clean` runs too).
Archives are pruned per server of this host's repository (MM_BACKUP_ROOT) by the policy of
`tasks.archive_retention`: the server's `backup.keep` in the inventory over the MM_KEEP_* defaults,
days counted in its `backup.timezone`. A server that left the inventory keeps its archives under
the defaults (in UTC), so its newest good backup always stays. Only completed backups whose
archive is in place are ever deleted, archive and manifest together (`BackupRepository.forget`),
under the repository's lock (a check records its findings under it too); running, failed and
corrupt backups, completed ones whose archive is missing, partial files and anything not
understood are left where they are.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from typing import Any
from uuid import UUID
from zoneinfo import ZoneInfo

from prefect import get_client, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.utilities.asyncutils import run_coro_as_sync

from tasks.archive_retention import KeepPolicy, keep_policy, plan_retention
from tasks.core.inventory import Inventory, Server, load_inventory
from tasks.core.settings import get_settings
from tasks.job_records import clean_job_records, job_retention
from tasks.repository import BackupRepository, BackupStatus


@dataclass
class ServerPrune:
    """What archive retention did (or, in a dry run, would do) to one server's backups."""

    server_id: UUID
    policy: KeepPolicy
    kept: int = 0
    removed: list[UUID] = field(default_factory=list)
    bytes_freed: int = 0
    #: Running, failed and corrupt backups, and completed ones whose archive is missing: left
    #: alone.
    untouched: int = 0


def policy_for(server: Server | None, defaults: KeepPolicy) -> KeepPolicy:
    """The server's own `backup.keep` rules over the defaults."""
    if server is None or server.backup is None or server.backup.keep is None:
        return defaults
    own = server.backup.keep.model_dump(exclude_none=True)
    return replace(defaults, **own)


def prune_repository(
    repository: BackupRepository,
    inventory: Inventory,
    defaults: KeepPolicy,
    logger: logging.Logger | logging.LoggerAdapter[Any],
    *,
    dry_run: bool = False,
) -> list[ServerPrune]:
    """Apply archive retention to every server with backups in `repository`."""
    servers = {server.id: server for server in inventory.servers}
    done: list[ServerPrune] = []
    verb = "would remove" if dry_run else "removed"
    for server_id in repository.server_ids():
        server = servers.get(server_id)
        policy = policy_for(server, defaults)
        zone = ZoneInfo(server.backup.timezone) if server and server.backup else ZoneInfo("UTC")
        name = server.name if server is not None else "not in the inventory"
        with repository.exclusive():
            result = _prune_server(repository, server_id, name, policy, zone, logger, dry_run)
        logger.info(
            "server %s (%s): keep %s: %d kept, %d %s, %d not good (running, failed, corrupt,"
            " missing) left alone",
            server_id,
            name,
            policy.describe(),
            result.kept,
            len(result.removed),
            verb,
            result.untouched,
        )
        done.append(result)
    return done


def _prune_server(
    repository: BackupRepository,
    server_id: UUID,
    name: str,
    policy: KeepPolicy,
    zone: ZoneInfo,
    logger: logging.Logger | logging.LoggerAdapter[Any],
    dry_run: bool,
) -> ServerPrune:
    verb = "would remove" if dry_run else "removed"
    if not dry_run:
        for finished in repository.finish_forgets(server_id):
            logger.info("server %s: finished removing backup %s", server_id, finished.backup_id)
    survey = repository.survey(server_id)
    for path in survey.unreadable:
        logger.warning("server %s: %s is not a manifest of ours; left alone", server_id, path)
    missing: set[UUID] = set()
    for manifest in survey.manifests:
        if manifest.status is BackupStatus.COMPLETED and not repository.present(manifest):
            missing.add(manifest.backup_id)
            logger.warning(
                "server %s: backup %s is completed but its archive %s is missing or of another"
                " size: not counted as a good backup (a check marks it corrupt)",
                server_id,
                manifest.backup_id,
                manifest.archive,
            )
    chosen = plan_retention(survey.manifests, policy, zone, missing=missing)
    result = ServerPrune(
        server_id=server_id,
        policy=policy,
        kept=len(chosen.keep),
        untouched=len(chosen.untouched),
    )
    for manifest in chosen.forget:
        if not dry_run:
            repository.forget(manifest)
        result.removed.append(manifest.backup_id)
        result.bytes_freed += manifest.size or 0
        logger.info(
            "server %s (%s): %s backup %s of %s (%s, %s bytes)",
            server_id,
            name,
            verb,
            manifest.backup_id,
            manifest.started_at.isoformat(),
            manifest.archive,
            manifest.size,
        )
    return result


@task(name="clean old job records", cache_policy=NO_CACHE)
def clean_old_job_records(dry_run: bool = False) -> dict[str, int]:
    """Delete the job records (flow runs) past MM_COMPLETED_JOBS_DAYS and friends, every pool."""
    policy = job_retention(get_settings().job_records)

    async def clean() -> dict[str, int]:
        async with get_client() as client:
            return await clean_job_records(client, policy, dry_run=dry_run)

    deleted: dict[str, int] = run_coro_as_sync(clean())
    get_run_logger().info(
        "job records %s: %s (completed: %s days and newest %d per queue; failed: %s days)",
        "that would be deleted" if dry_run else "deleted",
        ", ".join(f"{pool} {count}" for pool, count in deleted.items()) or "none",
        policy.completed_age.total_seconds() / 86400,
        policy.completed_count,
        policy.failed_age.total_seconds() / 86400,
    )
    return deleted


@task(name="prune backup archives", cache_policy=NO_CACHE)
def prune_backup_archives(dry_run: bool = False) -> list[ServerPrune]:
    """Keep each server's last / daily / weekly / monthly backups; remove the other ones."""
    settings = get_settings()
    repository = BackupRepository(settings.paths.backup_root)
    if not repository.server_ids():
        get_run_logger().info("no backups in %s", repository.root)
        return []
    # A broken or missing inventory fails the task: its per-server rules may keep more.
    inventory = load_inventory(settings.paths.inventory)
    return prune_repository(
        repository,
        inventory,
        keep_policy(settings.keep),
        get_run_logger(),
        dry_run=dry_run,
    )
