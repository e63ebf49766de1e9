"""What a valid cron expression and time zone are, for every schedule we hand to Prefect: the
inventory's backup schedules and the maintenance schedule (MM_MAINTENANCE_*)."""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, ValidationError


def valid_cron(expression: str) -> str:
    """`expression` if Prefect's own schedule model takes it, so the bootstrap never fails later."""
    # Imported when a schedule is checked, so that loading the vocabulary (tasks/core/) does not
    # import Prefect.
    from prefect.client.schemas.schedules import CronSchedule

    try:
        CronSchedule(cron=expression)
    except ValidationError:
        raise ValueError(f"{expression!r} is not a valid cron expression") from None
    return expression


def valid_time_zone(name: str) -> str:
    """`name` if Prefect's schedule model takes it as the time zone of a cron schedule."""
    from prefect.client.schemas.schedules import CronSchedule

    try:
        CronSchedule(cron="* * * * *", timezone=name)
    except ValidationError:
        raise ValueError(f"{name!r} is not an IANA time zone, e.g. Europe/Paris") from None
    return name


CronExpression = Annotated[str, AfterValidator(valid_cron)]
TimeZone = Annotated[str, AfterValidator(valid_time_zone)]
