"""The maintenance deployment's schedule (its on-demand runs: deployments/control/jobs.py).

The bootstrap gives the deployment one cron schedule, slug `maintenance`, from
MM_MAINTENANCE_CRON (default daily at 03:00) in MM_MAINTENANCE_TIMEZONE (default UTC); an empty
MM_MAINTENANCE_CRON removes it. Like the backup schedules it is set through the API rather than in
prefect.yaml, so a schedule deactivated in the UI stays deactivated across bootstraps.
"""

from __future__ import annotations

from functools import lru_cache

from prefect.client.orchestration import PrefectClient
from prefect.client.schemas.actions import DeploymentScheduleCreate
from prefect.client.schemas.schedules import CronSchedule
from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from deployments.control.catalogue import MAINTENANCE
from tasks.core.schedules import TimeZone, valid_cron

#: The slug of the schedule the bootstrap owns on the maintenance deployment.
SCHEDULE_SLUG = "maintenance"

#: Tag on every maintenance flow run.
MAINTENANCE_TAG = "maintenance"


class MaintenanceSettings(BaseSettings):
    """When the maintenance flow runs by itself."""

    model_config = SettingsConfigDict(env_prefix="MM_MAINTENANCE_", extra="ignore")

    cron: str = Field("0 3 * * *", description="Cron expression; empty: no schedule.")
    timezone: TimeZone = Field("UTC", description="IANA time zone of the cron expression.")

    @field_validator("cron")
    @classmethod
    def _valid_cron(cls, value: str) -> str:
        value = value.strip()
        return valid_cron(value) if value else value

    def schedule(self) -> DeploymentScheduleCreate | None:
        if not self.cron:
            return None
        return DeploymentScheduleCreate(
            schedule=CronSchedule(cron=self.cron, timezone=self.timezone),
            active=True,
            parameters={},
            slug=SCHEDULE_SLUG,
        )


@lru_cache
def get_maintenance_settings() -> MaintenanceSettings:
    return MaintenanceSettings()


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
    want = settings.schedule()
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
