"""Prefect's own API is closed to strangers: every route but the bare health checks wants the
auth string, changes want a CSRF token too, and only the UI's own origin gets a CORS answer.

A change sent without credentials is refused by whichever check comes first: the CSRF check
(403 "Missing CSRF token", Prefect runs it around the API app) or the auth string (401). A
stranger cannot get a CSRF token: `/csrf-token` wants the auth string too.

What it breaks: calls without credentials, with wrong ones, from a foreign web page, and
without a CSRF token. What must survive: nothing is read or changed; with the stack's
credentials the same calls work (the rest of the suite runs that way).
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import stat
import uuid

import httpx
import pytest
import websockets

from deployments.system.credentials import PREFECT_AUTH_FILE
from deployments.system.stack import Stack

#: What Prefect leaves open for probes (`create_api_app`'s health_check_paths): GET only.
OPEN_FOR_PROBES = {("GET", "/health"), ("GET", "/ready")}
METHODS = ("get", "post", "put", "patch", "delete")


def _prefect_routes(stack: Stack) -> list[tuple[str, str]]:
    """(method, path with its parameters filled in) of every route in Prefect's OpenAPI doc."""
    with stack.http() as http:
        document = http.get("/openapi.json").raise_for_status().json()
    routes = []
    for path, item in document["paths"].items():
        filled = re.sub(r"\{[^}]+\}", str(uuid.uuid4()), path)
        routes.extend((method.upper(), filled) for method in METHODS if method in item)
    return routes


def _basic(auth_string: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(auth_string.encode()).decode()}


@pytest.mark.parametrize(
    "credentials",
    ["none", "wrong", "bearer", "garbage"],
)
def test_every_prefect_route_wants_the_auth_string(stack: Stack, credentials: str) -> None:
    headers = {
        "none": {},
        "wrong": _basic("admin:not-the-password"),
        "bearer": {"Authorization": f"Bearer {stack.auth_string}"},
        "garbage": {"Authorization": "Basic !!!"},
    }[credentials]
    routes = _prefect_routes(stack)
    assert len(routes) > 150, "Prefect's OpenAPI document lists fewer routes than expected"
    # A made-up CSRF pair as well, so that changes meet the auth check and not only the CSRF one.
    forged_csrf = {"Prefect-Csrf-Token": "0" * 64, "Prefect-Csrf-Client": str(uuid.uuid4())}
    opened = []
    with httpx.Client(base_url=stack.api_url, timeout=30, headers=headers) as http:
        for method, path in routes:
            if (method, path) in OPEN_FOR_PROBES:
                continue
            body = None if method in ("GET", "DELETE") else {}
            for extra in ({}, forged_csrf):
                answer = http.request(method, path, json=body, headers=extra)
                if answer.status_code == 401 or (
                    method != "GET" and answer.status_code == 403 and "CSRF" in answer.text
                ):
                    continue
                opened.append(f"{method} {path} {sorted(extra)}: {answer.status_code}")
    assert not opened, "answered without credentials:\n" + "\n".join(opened)


def test_the_health_check_stays_open_and_says_nothing_else(stack: Stack) -> None:
    answer = httpx.get(f"{stack.api_url}/health", timeout=10)
    assert answer.status_code == 200
    assert answer.json() is True


def test_the_scan_deployment_cannot_be_run_by_a_stranger(stack: Stack) -> None:
    """The issue's own reproduction: a create_flow_run that would run a command of its own."""
    with stack.sync_client() as client:
        deployment = client.read_deployment_by_name("scan/scan")
        before = len(client.read_flow_runs(limit=200))
    answer = httpx.post(
        f"{stack.api_url}/deployments/{deployment.id}/create_flow_run",
        json={"parameters": {"server_id": str(uuid.uuid4())}, "job_variables": {"command": "id"}},
        timeout=30,
    )
    assert answer.status_code == 403 and "CSRF" in answer.text
    with httpx.Client(timeout=30) as http:
        token = http.get(f"{stack.api_url}/csrf-token", params={"client": "stranger"})
    assert token.status_code == 401
    with stack.sync_client() as client:
        assert len(client.read_flow_runs(limit=200)) == before


def test_changes_want_a_csrf_token_as_well(stack: Stack) -> None:
    with httpx.Client(
        base_url=stack.api_url, timeout=30, headers=_basic(stack.auth_string or "")
    ) as http:
        answer = http.post("/flow_runs/filter", json={"limit": 1})
    assert answer.status_code == 403
    assert "CSRF" in answer.text
    with stack.http() as http:
        assert http.post("/flow_runs/filter", json={"limit": 1}).status_code == 200
        # The server keeps the token it checked (deployments/system/prefect_server.py): another one
        # for the same client, or the same one for another client, is still refused.
        client = http.headers["Prefect-Csrf-Client"]
        for token, for_client in (("0" * 64, client), (http.headers["Prefect-Csrf-Token"], "x")):
            answer = http.post(
                "/flow_runs/filter",
                json={"limit": 1},
                headers={"Prefect-Csrf-Token": token, "Prefect-Csrf-Client": for_client},
            )
            assert answer.status_code == 403, (token, for_client)


@pytest.mark.parametrize("origin", ["https://evil.example", "null", "http://127.0.0.1:1"])
def test_a_foreign_web_page_gets_no_cors_answer(stack: Stack, origin: str) -> None:
    answer = httpx.options(
        f"{stack.api_url}/flow_runs/filter",
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization,content-type",
        },
        timeout=10,
    )
    assert answer.headers.get("access-control-allow-origin") in (None, "")
    assert answer.status_code == 400


def test_the_ui_origin_gets_its_cors_answer(stack: Stack) -> None:
    answer = httpx.options(
        f"{stack.api_url}/flow_runs/filter",
        headers={"Origin": stack.url, "Access-Control-Request-Method": "POST"},
        timeout=10,
    )
    assert answer.status_code == 200
    assert answer.headers["access-control-allow-origin"] == stack.url


def test_events_cannot_be_sent_or_read_without_credentials(stack: Stack) -> None:
    """The websockets: an emitted event could trigger our automations (crash, re-run)."""

    async def attempt(path: str, token: str | None, subprotocol: bool) -> str:
        url = stack.api_url.replace("http://", "ws://") + path
        protocols = [websockets.Subprotocol("prefect")] if subprotocol else None
        try:
            async with websockets.connect(url, subprotocols=protocols) as ws:
                await ws.send(json.dumps({"type": "auth", "token": token}))
                answer = await asyncio.wait_for(ws.recv(), timeout=10)
        except websockets.InvalidStatus as refused:
            return f"refused {refused.response.status_code}"
        except websockets.ConnectionClosed as closed:
            return f"closed {closed.rcvd.code if closed.rcvd else None}"
        return f"answered {answer!r}"

    for path in ("/events/in", "/events/out", "/logs/out"):
        for token, subprotocol in ((None, True), ("admin:not-the-password", True), (None, False)):
            outcome = asyncio.run(attempt(path, token, subprotocol))
            assert outcome.startswith(("closed", "refused")), f"{path}, {token!r}: {outcome}"


def test_the_stack_keeps_its_secrets_and_records_private(stack: Stack) -> None:
    assert stat.S_IMODE(stack.data_dir.stat().st_mode) == 0o700
    auth_file = stack.data_dir / PREFECT_AUTH_FILE
    assert auth_file.read_text().strip() == stack.auth_string
    private = [auth_file, *stack.logs_dir.iterdir(), *stack.prefect_home.rglob("*.db")]
    assert any(p.suffix == ".db" for p in private), "no SQLite database found"
    readable = [
        f"{p}: {stat.S_IMODE(p.stat().st_mode):04o}"
        for p in private
        if p.is_file() and stat.S_IMODE(p.stat().st_mode) & 0o077
    ]
    assert not readable, "readable by other users:\n" + "\n".join(readable)
