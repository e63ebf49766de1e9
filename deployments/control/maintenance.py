"""The maintenance deployment's schedule (its on-demand runs: deployments/control/jobs.py).

The bootstrap gives the deployment one cron schedule, slug `maintenance`, from
MM_MAINTENANCE_CRON (default daily at 03:00) in MM_MAINTENANCE_TIMEZONE (default UTC); an empty
MM_MAINTENANCE_CRON removes it. Like the backup schedules it is set through the API rather than in
prefect.yaml, so a schedule deactivated in the UI stays deactivated across bootstraps.
"""

from __future__ import annotations

from prefect.client.orchestration import PrefectClient
from prefect.client.schemas.actions import DeploymentScheduleCreate
from prefect.client.schemas.schedules import CronSchedule

from deployments.control.catalogue import MAINTENANCE
from tasks.core.schedules import valid_cron, valid_time_zone
from tasks.core.settings import MaintenanceSettings

#: The slug of the schedule the bootstrap owns on the maintenance deployment.
SCHEDULE_SLUG = "maintenance"

#: Tag on every maintenance flow run.
MAINTENANCE_TAG = "maintenance"


def check_maintenance(settings: MaintenanceSettings) -> None:
    """Refuse (ValueError, naming the variable) a cron expression or time zone that Prefect's
    `CronSchedule` would, with the check every schedule of ours goes through
    (tasks/core/schedules.py)."""
    if settings.cron:
        try:
            valid_cron(settings.cron)
        except ValueError as exc:
            raise ValueError(f"MM_MAINTENANCE_CRON: {exc}") from None
    try:
        valid_time_zone(settings.timezone)
    except ValueError as exc:
        raise ValueError(f"MM_MAINTENANCE_TIMEZONE: {exc}") from None


def maintenance_schedule(settings: MaintenanceSettings) -> DeploymentScheduleCreate | None:
    """The schedule the settings ask for (None: MM_MAINTENANCE_CRON is empty); checked first."""
    check_maintenance(settings)
    if not settings.cron:
        return None
    return DeploymentScheduleCreate(
        schedule=CronSchedule(cron=settings.cron, timezone=settings.timezone),
        active=True,
        parameters={},
        slug=SCHEDULE_SLUG,
    )


async def sync_maintenance_schedule(
    client: PrefectClient, settings: MaintenanceSettings
) -> str | None:
    """Make the maintenance deployment's `maintenance` schedule match the settings.

    Returns what changed, for the bootstrap's log, or None.
    """
    deployment = await client.read_deployment_by_name(MAINTENANCE.full_name)
    have = next(
        (
            s
            for s in await client.read_deployment_schedules(deployment.id)
            if s.slug == SCHEDULE_SLUG
        ),
        None,
    )
    want = maintenance_schedule(settings)
    if want is None:
        if have is None:
            return None
        await client.delete_deployment_schedule(deployment.id, have.id)
        return "removed the maintenance schedule: MM_MAINTENANCE_CRON is empty"
    if have is None:
        await client.create_deployment_schedules(deployment.id, [want])
        return f"added the maintenance schedule ({want.schedule})"
    if have.schedule != want.schedule or have.parameters != want.parameters:
        # `active` is not compared: a schedule deactivated in the UI stays deactivated.
        await client.update_deployment_schedule(
            deployment.id, have.id, schedule=want.schedule, parameters=want.parameters
        )
        return f"updated the maintenance schedule ({want.schedule})"
    return None
