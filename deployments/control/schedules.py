"""The cron schedules the bootstrap keeps from settings, one per deployment: the maintenance flow's
(deployments/control/maintenance.py) and the archive check's (deployments/control/checks.py).

Each is one schedule with a fixed slug on its deployment, made from a cron expression and a
time zone (an empty expression removes it). Like the backup schedules they are set through the
API rather than in prefect.yaml, so a schedule deactivated in the UI stays deactivated across
bootstraps.
"""

from __future__ import annotations

from typing import Any

from prefect.client.orchestration import PrefectClient
from prefect.client.schemas.actions import DeploymentScheduleCreate
from prefect.client.schemas.schedules import CronSchedule

from deployments.control.catalogue import Deployment
from tasks.core.schedules import valid_cron, valid_time_zone


def check_cron(cron: str, timezone: str, *, prefix: str) -> None:
    """Refuse (ValueError, naming `<prefix>CRON` or `<prefix>TIMEZONE`) a cron expression or
    time zone that Prefect's `CronSchedule` would, with the check every schedule of ours goes
    through (tasks/core/schedules.py)."""
    if cron:
        try:
            valid_cron(cron)
        except ValueError as exc:
            raise ValueError(f"{prefix}CRON: {exc}") from None
    try:
        valid_time_zone(timezone)
    except ValueError as exc:
        raise ValueError(f"{prefix}TIMEZONE: {exc}") from None


def cron_schedule(
    cron: str, timezone: str, *, slug: str, prefix: str, parameters: dict[str, Any] | None = None
) -> DeploymentScheduleCreate | None:
    """The schedule the settings ask for (None: an empty cron expression); checked first."""
    check_cron(cron, timezone, prefix=prefix)
    if not cron:
        return None
    return DeploymentScheduleCreate(
        schedule=CronSchedule(cron=cron, timezone=timezone),
        active=True,
        parameters=parameters or {},
        slug=slug,
    )


async def sync_schedule(
    client: PrefectClient,
    deployment: Deployment,
    slug: str,
    want: DeploymentScheduleCreate | None,
    *,
    what: str,
    variable: str,
) -> str | None:
    """Make `deployment`'s schedule `slug` be `want` (None: none).

    Returns what changed, for the bootstrap's log, or None. `what` names the schedule there
    ("the maintenance schedule"), `variable` the setting whose emptiness removed it.
    """
    found = await client.read_deployment_by_name(deployment.full_name)
    have = next(
        (s for s in await client.read_deployment_schedules(found.id) if s.slug == slug), None
    )
    if want is None:
        if have is None:
            return None
        await client.delete_deployment_schedule(found.id, have.id)
        return f"removed {what}: {variable} is empty"
    if have is None:
        await client.create_deployment_schedules(found.id, [want])
        return f"added {what} ({want.schedule})"
    if have.schedule != want.schedule or have.parameters != want.parameters:
        # `active` is not compared: a schedule deactivated in the UI stays deactivated.
        await client.update_deployment_schedule(
            found.id, have.id, schedule=want.schedule, parameters=want.parameters
        )
        return f"updated {what} ({want.schedule})"
    return None
