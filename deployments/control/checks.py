"""The archive check's schedule (its on-demand runs are `check:archives` jobs like any other:
deployments/control/jobs.py `enqueue`).

The bootstrap gives the check deployment one cron schedule, slug `check`, from MM_CHECK_CRON
(default daily at 04:00, an hour after maintenance) in MM_CHECK_TIMEZONE (default UTC); an
empty MM_CHECK_CRON removes it. How much each run re-reads (MM_CHECK_DAYS) is the flow's own
business (tasks/archive_checks.py): it follows the pace the runs come at, whatever starts them.
"""

from __future__ import annotations

from prefect.client.orchestration import PrefectClient
from prefect.client.schemas.actions import DeploymentScheduleCreate

from deployments.control.catalogue import CHECK
from deployments.control.schedules import check_cron, cron_schedule, sync_schedule
from tasks.core.jobs import JobType
from tasks.core.settings import CheckSettings

#: The slug of the schedule the bootstrap owns on the check deployment.
SCHEDULE_SLUG = "check"

#: The settings' variables, less CRON or TIMEZONE.
PREFIX = "MM_CHECK_"


def check_checks(settings: CheckSettings) -> None:
    """Refuse (ValueError, naming the variable) a cron expression or time zone that Prefect's
    `CronSchedule` would."""
    check_cron(settings.cron, settings.timezone, prefix=PREFIX)


def check_schedule(settings: CheckSettings) -> DeploymentScheduleCreate | None:
    """The schedule the settings ask for (None: MM_CHECK_CRON is empty); checked first.

    Its runs carry their job type as a parameter: they are made by Prefect's scheduler, not by
    `enqueue`, so they have no job-type tag.
    """
    return cron_schedule(
        settings.cron,
        settings.timezone,
        slug=SCHEDULE_SLUG,
        prefix=PREFIX,
        parameters={"job_type": JobType.CHECK_ARCHIVES.value},
    )


async def sync_check_schedule(client: PrefectClient, settings: CheckSettings) -> str | None:
    """Make the check deployment's `check` schedule match the settings; returns what changed."""
    return await sync_schedule(
        client,
        CHECK,
        SCHEDULE_SLUG,
        check_schedule(settings),
        what="the archive check schedule",
        variable=f"{PREFIX}CRON",
    )
