"""When a job may start: now, after a delay, or at a time. The API's `delay` (milliseconds) and
`runAt` (epoch milliseconds or ISO 8601, until the year 9999), and the CLI's `--in 10m` and
`--at 2026-12-24T03:00Z`, all come to one `due_time`; a time in the past means now."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

#: The longest delay: a year, so that milliseconds taken for microseconds are refused, not kept.
MAX_DELAY = timedelta(days=366)
#: The last time a `runAt` in epoch milliseconds may name: 9999-12-31T23:59:59.999Z.
MAX_EPOCH_MS = 253_402_300_799_999

_DATE_AND_TIME = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt ][0-9]{2}:[0-9]{2}")
_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)", re.IGNORECASE)
_UNITS = {
    "ms": timedelta(milliseconds=1),
    "s": timedelta(seconds=1),
    "m": timedelta(minutes=1),
    "h": timedelta(hours=1),
    "d": timedelta(days=1),
    "w": timedelta(weeks=1),
}


def parse_run_at(value: object) -> datetime:
    """The CLI's `--at`: epoch milliseconds (digits) or ISO 8601 (`Z` or an offset; none is
    UTC). ValueError says which form was expected."""
    if isinstance(value, str) and re.fullmatch(r"[0-9]+", text := value.strip()):
        return run_at_from_json(int(text))
    return run_at_from_json(value)


def run_at_from_json(value: object) -> datetime:
    """The API's `runAt`: epoch milliseconds as a JSON number from 0 to `MAX_EPOCH_MS`, or ISO
    8601 as a string (as `parse_run_at`), what its schema says and nothing else."""
    if isinstance(value, bool):
        raise ValueError("expected epoch milliseconds or an ISO 8601 time, not a boolean")
    if isinstance(value, int | float):
        if isinstance(value, float) and not value.is_integer():  # NaN and infinities too
            raise ValueError(f"{value} is not a whole number of epoch milliseconds")
        if not 0 <= value <= MAX_EPOCH_MS:
            raise ValueError(f"{value} is not epoch milliseconds from 0 to {MAX_EPOCH_MS}")
        return datetime.fromtimestamp(int(value) / 1000, UTC)
    if isinstance(value, datetime):
        moment = value
    elif isinstance(value, str):
        try:
            # A date and a time, as RFC 3339 has them: fromisoformat alone also reads ISO's
            # basic forms, in which "1798081200000" is a day in 1798.
            if not _DATE_AND_TIME.match(value.strip()):
                raise ValueError
            moment = datetime.fromisoformat(value.strip())
        except ValueError:
            raise ValueError(
                f"{value!r} is neither epoch milliseconds nor an ISO 8601 time such as"
                " 2026-12-24T03:00Z"
            ) from None
    else:
        raise ValueError("expected epoch milliseconds or an ISO 8601 time")
    try:  # 9999-12-31T23:00-05:00 is a time no datetime holds in UTC
        return moment.astimezone(UTC) if moment.tzinfo else moment.replace(tzinfo=UTC)
    except OverflowError:
        raise ValueError(f"{value!r} is beyond the last time a date can hold") from None


def parse_duration(text: str) -> timedelta:
    """`90s`, `10m`, `2h`, `1d`, `1h30m`, `250ms`: a sum of numbers with units."""
    cleaned = text.strip()
    parts = list(_DURATION.finditer(cleaned))
    if not parts or "".join(p.group(0) for p in parts) != re.sub(r"\s+", "", cleaned):
        raise ValueError(f"{text!r} is not a duration such as 90s, 10m, 2h or 1h30m")
    try:
        return sum((float(p.group(1)) * _UNITS[p.group(2).lower()] for p in parts), timedelta())
    except OverflowError:
        raise ValueError(f"{text!r} is longer than any date can be") from None


def due_time(
    delay: timedelta | None, run_at: datetime | None, now: datetime | None = None
) -> datetime | None:
    """When the job is due; None for now (no delay, or a time already past). At most one of
    `delay` and `run_at`; a delay of at most `MAX_DELAY`."""
    if delay is not None and run_at is not None:
        raise ValueError("give a delay or a time to run at, not both")
    if delay is not None and delay > MAX_DELAY:  # before the sum, which could overflow
        raise ValueError(f"a delay of {delay} is more than {MAX_DELAY.days} days")
    now = now or datetime.now(UTC)
    due = now + delay if delay is not None else run_at
    if due is None or due <= now:
        return None
    return due
