"""When a job may start: now, after a delay, or at a time. The API's `delay` (milliseconds) and
`runAt` (epoch milliseconds or ISO 8601), and the CLI's `--in 10m` and `--at 2026-12-24T03:00Z`,
all come to one `due_time`; a time in the past means now."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

#: How far ahead a job may be put: a year, so that a typo in a year is refused, not kept.
MAX_AHEAD = timedelta(days=366)

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
    """A time from epoch milliseconds (a number) or ISO 8601 (a string; `Z` or an offset, none
    is UTC). ValueError says which form was expected."""
    if isinstance(value, bool):
        raise ValueError("expected epoch milliseconds or an ISO 8601 time, not a boolean")
    if isinstance(value, int | float):
        try:
            return datetime.fromtimestamp(value / 1000, UTC)
        except (OverflowError, OSError, ValueError):
            raise ValueError(f"{value} is not a time in epoch milliseconds") from None
    if isinstance(value, datetime):
        moment = value
    elif isinstance(value, str):
        text = value.strip()
        if re.fullmatch(r"-?\d+(\.\d+)?", text):
            return parse_run_at(float(text))
        try:
            moment = datetime.fromisoformat(text)
        except ValueError:
            raise ValueError(
                f"{value!r} is neither epoch milliseconds nor an ISO 8601 time such as"
                " 2026-12-24T03:00Z"
            ) from None
    else:
        raise ValueError("expected epoch milliseconds or an ISO 8601 time")
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


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
    `delay` and `run_at`; neither more than `MAX_AHEAD` away."""
    if delay is not None and run_at is not None:
        raise ValueError("give a delay or a time to run at, not both")
    if delay is not None and delay > MAX_AHEAD:  # before the sum, which could overflow
        raise ValueError(f"a delay of {delay} is more than {MAX_AHEAD.days} days ahead")
    now = now or datetime.now(UTC)
    due = now + delay if delay is not None else run_at
    if due is None or due <= now:
        return None
    if due - now > MAX_AHEAD:
        raise ValueError(f"{due.isoformat()} is more than {MAX_AHEAD.days} days ahead")
    return due
