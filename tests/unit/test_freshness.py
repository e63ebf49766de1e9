"""The stale-backup rule: a schedule's longest gap plus the grace."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path
from uuid import uuid4

import pytest

from tasks.core.freshness import backup_max_age, longest_gap
from tasks.core.inventory import Server


@pytest.mark.parametrize(
    ("cron", "gap"),
    [
        ("* * * * *", timedelta(minutes=1)),
        ("*/5 * * * *", timedelta(minutes=5)),
        ("0 3 * * *", timedelta(days=1)),
        # Friday to Monday: a weekday schedule is not stale on Sunday.
        ("0 3 * * 1-5", timedelta(days=3)),
        ("0 0 1 * *", timedelta(days=31)),
    ],
)
def test_longest_gap_in_utc(cron: str, gap: timedelta) -> None:
    assert asyncio.run(longest_gap(cron, "UTC")) == gap


def test_a_daylight_saving_change_makes_one_day_longer() -> None:
    assert asyncio.run(longest_gap("0 3 * * *", "Europe/Paris")) == timedelta(hours=25)


def _server(backup: dict[str, object] | None) -> Server:
    return Server.model_validate(
        {
            "id": uuid4(),
            "name": "web-1",
            "host": "h",
            "username": "u",
            "private_key_file": Path("/k"),
            "backup": backup,
        }
    )


def test_max_age_is_the_gap_plus_the_grace() -> None:
    server = _server({"paths": ["/srv"], "schedule": "0 3 * * *"})
    age = asyncio.run(backup_max_age(server, timedelta(hours=2)))
    assert age == timedelta(hours=26)


def test_no_schedule_no_max_age() -> None:
    assert asyncio.run(backup_max_age(_server({"paths": ["/srv"]}), timedelta(hours=2))) is None
    assert asyncio.run(backup_max_age(_server(None), timedelta(hours=2))) is None


def test_ping_url_must_be_http() -> None:
    with pytest.raises(ValueError, match="not an http"):
        _server({"paths": ["/srv"], "ping_url": "ftp://hc/ping/x"})
    server = _server({"paths": ["/srv"], "ping_url": "https://hc-ping.com/abc"})
    assert server.backup is not None and server.backup.ping_url == "https://hc-ping.com/abc"
