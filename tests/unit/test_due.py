"""When a job may start: `delay`, `runAt`, `--in`, `--at` (tasks/core/due.py, the requests)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from pydantic import ValidationError

from api_shim.schemas import BackupRequest, ScanRequest, UpdateRequest
from tasks.core.due import (
    MAX_DELAY,
    MAX_EPOCH_MS,
    due_time,
    parse_duration,
    parse_run_at,
    run_at_from_json,
)

NOW = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (1798081200000, datetime(2026, 12, 24, 3, 0, tzinfo=UTC)),
        ("1798081200000", datetime(2026, 12, 24, 3, 0, tzinfo=UTC)),
        ("2026-12-24T03:00Z", datetime(2026, 12, 24, 3, 0, tzinfo=UTC)),
        ("2026-12-24T04:00:00+01:00", datetime(2026, 12, 24, 3, 0, tzinfo=UTC)),
        # No zone: UTC, as everything else here.
        ("2026-12-24 03:00", datetime(2026, 12, 24, 3, 0, tzinfo=UTC)),
    ],
)
def test_run_at_is_epoch_milliseconds_or_iso(value: object, expected: datetime) -> None:
    assert parse_run_at(value) == expected


@pytest.mark.parametrize("value", ["tomorrow", "2026-13-01", True, [1]])
def test_run_at_refuses_what_is_neither(value: object) -> None:
    with pytest.raises(ValueError, match="epoch milliseconds"):
        parse_run_at(value)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("90s", timedelta(seconds=90)),
        ("10m", timedelta(minutes=10)),
        ("1h30m", timedelta(minutes=90)),
        ("2d", timedelta(days=2)),
        ("250ms", timedelta(milliseconds=250)),
    ],
)
def test_durations(text: str, expected: timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize("text", ["10", "", "m", "10 minutes", "10m x"])
def test_durations_refused(text: str) -> None:
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration(text)


def test_due_time() -> None:
    assert due_time(None, None, NOW) is None
    assert due_time(timedelta(minutes=5), None, NOW) == NOW + timedelta(minutes=5)
    assert due_time(None, NOW + timedelta(hours=1), NOW) == NOW + timedelta(hours=1)
    # A time already past means now.
    assert due_time(None, NOW - timedelta(hours=1), NOW) is None
    assert due_time(timedelta(0), None, NOW) is None
    with pytest.raises(ValueError, match="not both"):
        due_time(timedelta(1), NOW + timedelta(hours=1), NOW)
    with pytest.raises(ValueError, match="366 days"):
        due_time(MAX_DELAY + timedelta(days=1), None, NOW)
    # The largest delay a timedelta holds is refused, not an overflow (a fuzzer's 500).
    with pytest.raises(ValueError, match="366 days"):
        due_time(timedelta.max, None, NOW)
    # A time may be far ahead: what the OpenAPI document calls valid is accepted.
    far = datetime(9999, 12, 31, tzinfo=UTC)
    assert due_time(None, far, NOW) == far


def test_the_apis_run_at_is_what_its_schema_says() -> None:
    assert run_at_from_json(MAX_EPOCH_MS).year == 9999
    assert run_at_from_json(2.0e12) == run_at_from_json(2_000_000_000_000)
    refused = [MAX_EPOCH_MS + 1, -1, 1.5, float("nan"), float("inf"), "1798081200000"]
    for value in refused:
        with pytest.raises(ValueError):
            run_at_from_json(value)
    with pytest.raises(ValueError, match="beyond the last time"):
        run_at_from_json("9999-12-31T23:00-05:00")


def test_delays_beyond_any_date_are_refused_with_the_field_named() -> None:
    with pytest.raises(ValueError, match="longer than any date"):
        parse_duration("99999999999999w")
    with pytest.raises(ValidationError, match="delay"):
        UpdateRequest.model_validate({"delay": 66419627956033590115958784})


def test_requests_take_delay_or_run_at_and_keep_them_out_of_the_options() -> None:
    backup = BackupRequest.model_validate({"compression": True, "delay": 60_000})
    due = backup.due()
    assert due is not None and timedelta(seconds=55) < due - datetime.now(UTC) <= timedelta(60)
    assert backup.options().model_dump() == {
        "backup_type": "full",
        "compression": True,
        "encryption": False,
    }
    assert ScanRequest.model_validate({"runAt": "2020-01-01T00:00Z"}).due() is None


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"runAt": "next tuesday"}, "runAt"),
        ({"delay": -1}, "delay"),
        ({"delay": 1000, "runAt": 1798081200000}, "not both"),
    ],
)
def test_bad_due_times_name_the_field(body: dict[str, object], field: str) -> None:
    with pytest.raises(ValidationError) as raised:
        ScanRequest.model_validate(body)
    assert field in str(raised.value)
