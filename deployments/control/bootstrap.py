"""The one idempotent step that makes a Prefect server ready for our jobs.

Against the API in PREFECT_API_URL it creates or updates the work pools (with our fixed job
template, deployments/control/job_template.py) and their priority work queues from the queue table,
applies prefect.yaml with `prefect deploy --all`, creates the automations that crash stalled
runs and re-run crashed ones (`deployments.control.automations`) and those that notify
(`deployments.control.notifications`, with their Apprise blocks), and makes the backup deployment's
schedules match the inventory (the maintenance and check schedules: the settings). Running it
again changes nothing; what an operator sets at run time (a paused pool, a deactivated schedule)
survives it.

    python -m deployments.control.bootstrap [--project-dir DIR] [--inventory FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

from prefect import get_client
from prefect.client.orchestration import PrefectClient
from prefect.client.schemas.actions import (
    DeploymentScheduleCreate,
    WorkPoolCreate,
    WorkPoolUpdate,
)
from prefect.client.schemas.objects import WorkQueue
from prefect.client.schemas.schedules import CronSchedule
from prefect.exceptions import ObjectNotFound
from prefect.settings import get_current_settings

from deployments.control.automations import (
    check_supervision,
    ensure_automations,
    watch_unfinished_runs,
)
from deployments.control.catalogue import BACKUP
from deployments.control.checks import check_checks, sync_check_schedule
from deployments.control.job_template import base_job_template
from deployments.control.maintenance import check_maintenance, sync_maintenance_schedule
from deployments.control.notifications import ensure_notifications
from deployments.control.queues import QUEUES, Priority, Queue
from tasks.core.errors import InventoryError
from tasks.core.inventory import Inventory, load_inventory
from tasks.core.jobs import JobType
from tasks.core.settings import Settings, get_settings

logger = logging.getLogger(__name__)

#: The repository root: where prefect.yaml and the flows live.
PROJECT_DIR = Path(__file__).resolve().parents[2]

#: Prefix of the slugs of the schedules the bootstrap owns; other schedules are left alone.
SCHEDULE_SLUG_PREFIX = "server-"

WORKER_TYPE = "process"


def schedule_slug(server_id: object) -> str:
    """The slug of a server's backup schedule; stable, so a re-run updates instead of adding."""
    return f"{SCHEDULE_SLUG_PREFIX}{server_id}"


async def bootstrap(
    project_dir: Path, inventory: Inventory | None, settings: Settings | None = None
) -> None:
    """Pools, queues, deployments, automations, schedules; `inventory=None` skips the backup
    schedules. `settings`: this process's (`get_settings`) unless given."""
    settings = settings or get_settings()
    async with get_client() as client:
        for queue in QUEUES:
            await ensure_pool(client, queue, project_dir)
    await deploy(project_dir)
    async with get_client() as client:
        for change in await ensure_automations(client, settings.supervision):
            logger.info("%s", change)
        # After a restart of everything, runs left Pending or Running may have no stalled
        # watch (their heartbeats died unprocessed with the server): give them one.
        watched = await watch_unfinished_runs(client)
        if watched:
            logger.info("watching %d unfinished runs for heartbeats", watched)
        for schedule_change in (
            await sync_maintenance_schedule(client, settings.maintenance),
            await sync_check_schedule(client, settings.check),
        ):
            if schedule_change is not None:
                logger.info("%s", schedule_change)
        if inventory is not None:
            await sync_backup_schedules(client, inventory)
        # Names only in these lines: the URLs stay in the blocks.
        for notify_change in await ensure_notifications(client, inventory, settings.notify):
            logger.info("%s", notify_change)


async def ensure_pool(client: PrefectClient, queue: Queue, project_dir: Path) -> None:
    """The queue's process work pool with its limit, our fixed job template for runs in
    `project_dir`, and the four priority work queues."""
    template = base_job_template(project_dir)
    try:
        pool = await client.read_work_pool(queue.name)
    except ObjectNotFound:
        logger.info("creating work pool %s (limit %d)", queue.name, queue.concurrency)
        await client.create_work_pool(
            WorkPoolCreate(
                name=queue.name,
                type=WORKER_TYPE,
                description=queue.description,
                base_job_template=template,
                concurrency_limit=queue.concurrency,
            )
        )
    else:
        if pool.type != WORKER_TYPE:
            raise RuntimeError(
                f"work pool {queue.name!r} has type {pool.type!r}, not {WORKER_TYPE!r};"
                " delete it (prefect work-pool delete) and bootstrap again"
            )
        # Only fields that differ, and never is_paused: a pause is the operator's, not ours.
        changes: dict[str, Any] = {}
        if pool.concurrency_limit != queue.concurrency:
            changes["concurrency_limit"] = queue.concurrency
        if pool.description != queue.description:
            changes["description"] = queue.description
        if pool.base_job_template != template:
            changes["base_job_template"] = template
        if changes:
            logger.info("updating work pool %s: %s", queue.name, ", ".join(changes))
            await client.update_work_pool(queue.name, WorkPoolUpdate(**changes))
    await ensure_work_queues(client, queue.name)


async def ensure_work_queues(client: PrefectClient, pool_name: str) -> None:
    """Work queues critical/high/normal/low with priorities 1-4 in the pool."""
    # Lowest first, re-reading each time: the server shifts other queues' priorities to keep
    # them unique (the pool's `default` queue ends up behind ours), so earlier reads go stale.
    for priority in Priority:
        existing = await _work_queues(client, pool_name)
        current = existing.get(priority.queue_name)
        if current is None:
            logger.info("creating work queue %s/%s", pool_name, priority.queue_name)
            await client.create_work_queue(
                name=priority.queue_name,
                description=f"Jobs of priority {priority.name} ({int(priority)})",
                priority=int(priority),
                work_pool_name=pool_name,
            )
        elif current.priority != int(priority):
            logger.info("setting priority of %s/%s", pool_name, priority.queue_name)
            await client.update_work_queue(current.id, priority=int(priority))


async def _work_queues(client: PrefectClient, pool_name: str) -> dict[str, WorkQueue]:
    return {q.name: q for q in await client.read_work_queues(work_pool_name=pool_name)}


async def deploy(project_dir: Path) -> None:
    """Apply prefect.yaml as `prefect deploy --all` does, because it is that command."""
    env = {
        **os.environ,
        # The API this process was pointed at, even if that came from a settings context.
        "PREFECT_API_URL": str(get_current_settings().api.url),
    }
    started = time.monotonic()
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "prefect",
        "--no-prompt",
        "deploy",
        "--all",
        cwd=project_dir,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await process.communicate()
    if process.returncode != 0:
        raise RuntimeError(
            f"prefect deploy --all failed (exit {process.returncode}) in {project_dir}:\n"
            + output.decode(errors="replace")[-4000:]
        )
    logger.info("applied %s in %.1f s", project_dir / "prefect.yaml", time.monotonic() - started)


def wanted_schedules(inventory: Inventory) -> dict[str, DeploymentScheduleCreate]:
    """One cron schedule per server with a `backup.schedule`, by slug."""
    wanted: dict[str, DeploymentScheduleCreate] = {}
    for server in inventory.servers:
        if server.backup is None or server.backup.schedule is None:
            continue
        slug = schedule_slug(server.id)
        wanted[slug] = DeploymentScheduleCreate(
            schedule=CronSchedule(cron=server.backup.schedule, timezone=server.backup.timezone),
            active=True,
            parameters={"server_id": str(server.id), "job_type": JobType.BACKUP_SCHEDULED.value},
            slug=slug,
        )
    return wanted


async def sync_backup_schedules(client: PrefectClient, inventory: Inventory) -> None:
    """Make the backup deployment's server schedules match the inventory."""
    deployment = await client.read_deployment_by_name(BACKUP.full_name)
    existing = {
        s.slug: s
        for s in await client.read_deployment_schedules(deployment.id)
        if s.slug is not None and s.slug.startswith(SCHEDULE_SLUG_PREFIX)
    }
    for slug, want in wanted_schedules(inventory).items():
        have = existing.pop(slug, None)
        if have is None:
            logger.info("adding backup schedule %s (%s)", slug, want.schedule)
            await client.create_deployment_schedules(deployment.id, [want])
        elif have.schedule != want.schedule or have.parameters != want.parameters:
            # `active` is not compared: a schedule deactivated in the UI stays deactivated.
            logger.info("updating backup schedule %s (%s)", slug, want.schedule)
            await client.update_deployment_schedule(
                deployment.id, have.id, schedule=want.schedule, parameters=want.parameters
            )
    for slug, stale in existing.items():
        logger.info("removing backup schedule %s: server left the inventory", slug)
        await client.delete_deployment_schedule(deployment.id, stale.id)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m deployments.control.bootstrap", description=__doc__
    )
    parser.add_argument("--project-dir", type=Path, default=PROJECT_DIR)
    parser.add_argument(
        "--inventory",
        type=Path,
        default=None,
        help="inventory YAML (default: MM_INVENTORY); if missing, schedules are left alone",
    )
    args = parser.parse_args(argv)
    # Prefect configures the root logger on import, so ours gets a handler of its own.
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("bootstrap: %(message)s"))
    logger.addHandler(handler)
    logger.propagate = False
    logger.setLevel(logging.INFO)
    # Every setting checked before anything changes on the server, each bad one named.
    try:
        settings = get_settings()
        check_maintenance(settings.maintenance)
        check_checks(settings.check)
        check_supervision(settings.supervision)
    except ValueError as exc:  # a SettingsError, or a check's refusal
        logger.error("%s", exc)
        return 2
    path: Path = args.inventory or settings.paths.inventory
    inventory: Inventory | None = None
    if path.exists():
        try:
            inventory = load_inventory(path)
        except InventoryError as exc:
            logger.error("%s", exc)
            return 2
    else:
        logger.warning("%s not found: backup schedules left as they are", path)
    asyncio.run(bootstrap(args.project_dir.resolve(), inventory, settings))
    return 0


if __name__ == "__main__":
    sys.exit(main())
