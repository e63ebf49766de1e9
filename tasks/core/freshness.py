"""When a server's backups count as stale: its last completed backup is older than the longest
gap between two ticks of its schedule plus a grace (MM_NOTIFY_STALE_GRACE_SECONDS, two hours
by default). The dead-man's switch of the notifications and the `mm_backup_max_age_seconds`
gauge of /metrics both read it from here, so an alert and a message never disagree."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from itertools import pairwise

from tasks.core.inventory import Server

#: How far ahead the gaps of a schedule are looked for, and at most how many ticks: a year holds
#: every gap of a cron expression but leap days, and a minutely one needs no more than a day.
_HORIZON = timedelta(days=366)
_TICKS = 1500

#: The longest gap of each (cron, time zone) seen, since it does not depend on the day.
_gaps: dict[tuple[str, str], timedelta] = {}


async def longest_gap(cron: str, time_zone: str) -> timedelta:
    """The longest time between two consecutive ticks of `cron` in `time_zone` (a weekday
    schedule: from Friday to Monday)."""
    key = (cron, time_zone)
    if key not in _gaps:
        # Prefect's own schedule, so the gaps are those of the runs it will create; imported
        # here so that loading the vocabulary does not import Prefect.
        from prefect.server.schemas.schedules import CronSchedule

        start = datetime.now(UTC)
        dates = await CronSchedule(cron=cron, timezone=time_zone).get_dates(
            n=_TICKS, start=start, end=start + _HORIZON
        )
        gaps = [(later - earlier).total_seconds() for earlier, later in pairwise(dates)]
        _gaps[key] = timedelta(seconds=max(gaps)) if gaps else _HORIZON
    return _gaps[key]


async def backup_max_age(server: Server, grace: timedelta) -> timedelta | None:
    """How old the server's last completed backup may be; None without a backup schedule."""
    if server.backup is None or server.backup.schedule is None:
        return None
    return await longest_gap(server.backup.schedule, server.backup.timezone) + grace
