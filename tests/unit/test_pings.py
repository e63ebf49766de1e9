"""The ping URLs of Healthchecks and Uptime Kuma, what a log may say of them, and a ping that
fails without failing anything (an httpx MockTransport stands for the service)."""

from __future__ import annotations

import logging
from uuid import UUID

import httpx
import pytest

from tasks import pings
from tasks.pings import Event, Ping, Pings, is_uptime_kuma, ping_for, redacted, send

RID = UUID("00000000-0000-4000-8000-000000000001")
HC = "https://hc-ping.com/0f7c1c5e-token"
KUMA = "https://kuma.example:3001/api/push/s3cr3t?status=up&msg=OK&ping="


@pytest.mark.parametrize(
    ("event", "expected"),
    [
        (Event.START, Ping("GET", f"{HC}/start?rid={RID}")),
        (Event.SUCCESS, Ping("GET", f"{HC}?rid={RID}")),
        (Event.FAILURE, Ping("POST", f"{HC}/fail?rid={RID}", "disk full")),
    ],
)
def test_healthchecks_start_success_and_fail(event: Event, expected: Ping) -> None:
    assert ping_for(HC, event, "disk full" if event is Event.FAILURE else "", RID) == expected


def test_healthchecks_keeps_a_slug_urls_query_and_drops_a_trailing_slash() -> None:
    url = "https://hc.example/ping/key/db-backup/?create=1"
    ping = ping_for(url, Event.START, run_id=None)
    assert ping == Ping("GET", "https://hc.example/ping/key/db-backup/start?create=1")


def test_a_long_reason_is_cut() -> None:
    ping = ping_for(HC, Event.FAILURE, "x" * 5000)
    assert ping is not None and ping.body == "x" * pings.REASON_CHARS


def test_uptime_kuma_has_no_start_and_says_up_or_down_with_a_message() -> None:
    assert is_uptime_kuma(KUMA) and not is_uptime_kuma(HC)
    assert ping_for(KUMA, Event.START) is None
    up = ping_for(KUMA, Event.SUCCESS, "backup done", RID)
    down = ping_for(KUMA, Event.FAILURE, "no route to host " * 50, RID)
    assert up is not None and down is not None
    # Kuma's own query (ping=) is kept, status and msg replaced, no rid (Kuma has none).
    assert up == Ping(
        "GET", "https://kuma.example:3001/api/push/s3cr3t?ping=&status=up&msg=backup+done"
    )
    parsed = httpx.URL(down.url)
    assert parsed.params["status"] == "down" and down.method == "GET"
    assert len(parsed.params["msg"]) == pings.KUMA_MESSAGE_CHARS


def test_a_log_names_scheme_and_host_only() -> None:
    assert redacted(HC) == "https://hc-ping.com/..."
    assert redacted(KUMA) == "https://kuma.example:3001/..."


def test_a_ping_retries_a_5xx_and_stops_at_a_4xx(monkeypatch, caplog) -> None:
    monkeypatch.setattr(pings, "PAUSE", 0)
    seen: list[str] = []
    answers = iter([503, 502, 200])

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request.method)
        return httpx.Response(next(answers))

    with httpx.Client(transport=httpx.MockTransport(answer)) as client:
        assert send(Ping("GET", HC), logging.getLogger("t"), client=client) is True
    assert len(seen) == 3
    seen.clear()
    with httpx.Client(transport=httpx.MockTransport(lambda r: httpx.Response(404))) as client:
        with caplog.at_level(logging.WARNING):
            assert send(Ping("GET", HC), logging.getLogger("t"), client=client) is False
    assert "HTTP 404" in caplog.text and "after 1 tries" in caplog.text
    assert "token" not in caplog.text


def test_an_unreachable_service_costs_the_tries_and_a_warning_without_the_token(caplog) -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError(f"cannot connect to {request.url}")

    with httpx.Client(transport=httpx.MockTransport(refuse)) as client:
        with caplog.at_level(logging.WARNING):
            assert send(Ping("GET", HC), logging.getLogger("t"), client=client) is False
    assert f"after {pings.TRIES} tries (ConnectError)" in caplog.text
    assert "token" not in caplog.text and "hc-ping.com/..." in caplog.text


def test_no_url_no_ping() -> None:
    quiet = Pings(None, logging.getLogger("t"))
    assert (quiet.start(), quiet.success("x"), quiet.failure("y")) == (False, False, False)
