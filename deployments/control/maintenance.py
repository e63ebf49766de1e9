"""The maintenance deployment's schedule and on-demand runs.

The bootstrap gives the deployment one cron schedule, slug `maintenance`, from
MM_MAINTENANCE_CRON (default daily at 03:00) in MM_MAINTENANCE_TIMEZONE (default UTC); an empty
MM_MAINTENANCE_CRON removes it. Like the backup schedules it is set through the API rather than in
prefect.yaml, so a schedule deactivated in the UI stays deactivated across bootstraps.
"""

from __future__ import annotations

from typing import Any

from prefect.client.orchestration import PrefectClient
from prefect.client.schemas.actions import DeploymentScheduleCreate
from prefect.client.schemas.objects import FlowRun
from prefect.client.schemas.schedules import CronSchedule
from pydantic import ValidationError

from deployments.control.catalogue import MAINTENANCE
from tasks.core.settings import MaintenanceSettings

#: The slug of the schedule the bootstrap owns on the maintenance deployment.
SCHEDULE_SLUG = "maintenance"

#: Tag on every maintenance flow run.
MAINTENANCE_TAG = "maintenance"


def check_maintenance(settings: MaintenanceSettings) -> None:
    """Refuse (ValueError) a cron expression or time zone that Prefect's `CronSchedule` would.

    Here rather than in tasks/core/settings.py: the syntax is Prefect's, and tasks/core does not
    import it."""
    if settings.cron:
        try:
            CronSchedule(cron=settings.cron)
        except ValidationError:
            raise ValueError(
                f"MM_MAINTENANCE_CRON: {settings.cron!r} is not a valid cron expression"
            ) from None
    try:
        CronSchedule(cron="* * * * *", timezone=settings.timezone)
    except ValidationError:
        raise ValueError(
            f"MM_MAINTENANCE_TIMEZONE: {settings.timezone!r} is not an IANA time zone,"
            " e.g. Europe/Paris"
        ) from None


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


async def create_maintenance_run(client: PrefectClient, parameters: dict[str, Any]) -> FlowRun:
    """A maintenance flow run now, in the deployment's own work queue (`low`)."""
    deployment = await client.read_deployment_by_name(MAINTENANCE.full_name)
    return await client.create_flow_run_from_deployment(
        deployment.id,
        parameters=parameters,
        work_queue_name=MAINTENANCE.priority.queue_name,
        tags=[MAINTENANCE_TAG],
    )
