"""Concurrent changes through one Prefect client share one CSRF token fetch.

The lock lives in deployments/control/csrf.py.

A fake server on httpx's MockTransport keeps one token per client id, as Prefect's does, and
refuses a change that carries an older one.
"""

from __future__ import annotations

import asyncio
import secrets
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from prefect.client.base import PrefectHttpxAsyncClient

from deployments.control import csrf


class TokenServer:
    def __init__(self) -> None:
        self.tokens: dict[str, str] = {}
        self.fetches = 0
        self.refused = 0

    async def handle(self, request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/csrf-token"):
            self.fetches += 1
            token = secrets.token_hex(8)
            self.tokens[request.url.params["client"]] = token
            await asyncio.sleep(0.01)  # the answer's way back: a later fetch may overtake it
            expiration = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
            return httpx.Response(
                200, json={"token": token, "client": "x", "expiration": expiration}
            )
        client = request.headers.get("prefect-csrf-client", "")
        if self.tokens.get(client) != request.headers.get("prefect-csrf-token"):
            self.refused += 1
            return httpx.Response(403, json={"detail": "Invalid CSRF token or client identifier."})
        return httpx.Response(200, json=[])


async def _burst(server: TokenServer, requests: int) -> None:
    transport = httpx.MockTransport(server.handle)
    async with PrefectHttpxAsyncClient(
        transport=transport, base_url="http://prefect/api", enable_csrf_support=True
    ) as client:
        answers = await asyncio.gather(
            *(client.post("/flow_runs/count", json={}) for _ in range(requests))
        )
    assert all(a.status_code == 200 for a in answers)


def test_concurrent_changes_fetch_one_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(PrefectHttpxAsyncClient, "_add_csrf_headers", csrf._original)
    csrf.serialize_token_fetches()
    server = TokenServer()
    asyncio.run(_burst(server, 24))
    assert server.fetches == 1
    assert server.refused == 0


def test_without_it_the_same_burst_races(monkeypatch: pytest.MonkeyPatch) -> None:
    """The reason for the module: Prefect's own client refuses itself under a burst."""
    monkeypatch.setattr(PrefectHttpxAsyncClient, "_add_csrf_headers", csrf._original)
    monkeypatch.setattr("prefect.client.base.PREFECT_CLIENT_MAX_RETRIES", _Setting(0))
    server = TokenServer()
    with pytest.raises(httpx.HTTPStatusError):
        asyncio.run(_burst(server, 24))
    assert server.fetches > 1
    assert server.refused > 0


class _Setting:
    def __init__(self, value: int) -> None:
        self._value = value

    def value(self) -> int:
        return self._value
