"""The maintenance deployment's schedule (its on-demand runs: deployments/control/jobs.py).

The bootstrap gives the deployment one cron schedule, slug `maintenance`, from
MM_MAINTENANCE_CRON (default daily at 03:00) in MM_MAINTENANCE_TIMEZONE (default UTC); an empty
MM_MAINTENANCE_CRON removes it (deployments/control/schedules.py keeps it).
"""

from __future__ import annotations

from prefect.client.orchestration import PrefectClient
from prefect.client.schemas.actions import DeploymentScheduleCreate

from deployments.control.catalogue import MAINTENANCE
from deployments.control.schedules import check_cron, cron_schedule, sync_schedule
from tasks.core.settings import MaintenanceSettings

#: The slug of the schedule the bootstrap owns on the maintenance deployment.
SCHEDULE_SLUG = "maintenance"

#: Tag on every maintenance flow run.
MAINTENANCE_TAG = "maintenance"

#: The settings' variables, less CRON or TIMEZONE.
PREFIX = "MM_MAINTENANCE_"


def check_maintenance(settings: MaintenanceSettings) -> None:
    """Refuse (ValueError, naming the variable) a cron expression or time zone that Prefect's
    `CronSchedule` would."""
    check_cron(settings.cron, settings.timezone, prefix=PREFIX)


def maintenance_schedule(settings: MaintenanceSettings) -> DeploymentScheduleCreate | None:
    """The schedule the settings ask for (None: MM_MAINTENANCE_CRON is empty); checked first."""
    return cron_schedule(settings.cron, settings.timezone, slug=SCHEDULE_SLUG, prefix=PREFIX)


async def sync_maintenance_schedule(
    client: PrefectClient, settings: MaintenanceSettings
) -> str | None:
    """Make the maintenance deployment's `maintenance` schedule match the settings.

    Returns what changed, for the bootstrap's log, or None.
    """
    return await sync_schedule(
        client,
        MAINTENANCE,
        SCHEDULE_SLUG,
        maintenance_schedule(settings),
        what="the maintenance schedule",
        variable=f"{PREFIX}CRON",
    )
