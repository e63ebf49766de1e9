"""Hostile input against the API shim of the session stack, and secrets kept out of logs.

Breaks: ids with `../` and shell metacharacters, bodies that are huge, malformed, of the wrong
content type or full of metacharacters, a backup path that is itself a shell command.
Must survive: every answer a clear 4xx in the envelope (never 5xx), nothing executed (a
`touch` witness never appears), nothing written to the repository by a refused request; after
real SSH work, no log file, flow-run log or API answer holds the private key, the JWT secret or
a bearer token.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest
from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

from deployments.system.local_target import LocalTarget
from deployments.system.stack import Stack
from tests.integration.conftest import InventoryFile
from tests.support.api import Api, error, ok

_json = {"Content-Type": "application/json"}


@pytest.fixture(scope="module")
def admin(stack: Stack) -> Iterator[Api]:
    assert stack.shim_url and stack.jwt_secret
    with Api(stack.shim_url, stack.jwt_secret, "hostile-admin", "admin") as api:
        yield api


def _files(*roots: Path | None) -> set[Path]:
    return {p for root in roots if root is not None and root.exists() for p in root.rglob("*")}


def _commands(witness: Path) -> list[str]:
    """Shell fragments that would create `witness` if anything ran them."""
    return [f"$(touch {witness})", f"`touch {witness}`", f";touch {witness}", f"|touch {witness}"]


def test_hostile_requests_are_clear_4xx_and_change_nothing(
    stack: Stack, admin: Api, target: LocalTarget, inventory: InventoryFile, tmp_path: Path
):
    witness = tmp_path / "witness"
    server_id = inventory.add_server(target)
    before = _files(stack.backup_root, stack.results_root)
    answers: list[tuple[str, httpx.Response]] = []

    def send(label: str, method: str, path: str, **kwargs: object) -> httpx.Response:
        response = admin.http.request(method, path, **kwargs)  # type: ignore[arg-type]
        answers.append((label, response))
        return response

    # Ids: traversal (encoded, so no client normalizes it away) and shell metacharacters.
    for bad in ["..%2F..%2Fetc%2Fpasswd", "..%2F", "%2E%2E", "..%2F..%2F"]:
        for path in (f"/api/servers/{bad}/backup", f"/api/jobs/{bad}"):
            response = send(f"id {bad}", "POST" if "servers" in path else "GET", path)
            message = error(response, response.status_code)
            assert response.status_code in (404, 405, 422), (path, response.text)
            assert any(w in message for w in ("no endpoint", "not allowed", "_id")), message
    for bad in [*_commands(witness), "../../etc/passwd"]:
        encoded = quote(bad, safe="")
        # A decoded `/` makes it another path (404); otherwise the id is not a UUID (422).
        response = send("server id", "POST", f"/api/servers/{encoded}/scan")
        message = error(response, 404 if "/" in bad else 422)
        assert "no endpoint" in message if "/" in bad else "server_id" in message, message
        for method, suffix in [
            ("GET", ""),
            ("DELETE", ""),
            ("POST", "/retry"),
            ("POST", "/cancel"),
        ]:
            response = send("job id", method, f"/api/jobs/{encoded}{suffix}")
            message = error(response, 404 if "/" in bad else 422)
            assert "no endpoint" in message if "/" in bad else "job_id" in message, message

    # Bodies: metacharacters where an enum or a number belongs.
    scan, backup = f"/api/servers/{server_id}/scan", f"/api/servers/{server_id}/backup"
    for command in _commands(witness):
        for path, body, field in [
            (scan, {"scan_type": command}, "scan_type"),
            (backup, {"backup_type": command}, "backup_type"),
            (backup, {"priority": command}, "priority"),
            (backup, {"compression": command}, "compression"),
            (scan, {command: "quick"}, command),
            ("/api/queues/pause", {"queue": command}, "queue"),
            ("/api/queues/pause", {"queue": "../backup"}, "queue"),
        ]:
            assert field in error(send("body", "POST", path, json=body), 422), body

    # Malformed JSON and JSON that is not an object.
    for raw in [b'{"scan_type":', b"{'scan_type': 'quick'}", b"nul"]:
        response = send("malformed", "POST", scan, content=raw, headers=_json)
        assert "malformed JSON" in error(response, 422), raw
    # Bytes that are not UTF-8, which JSON must be (api_shim/body_guard.py).
    for raw in [b"\xff\xfe", b'{"scan_type": "\xe9"}']:
        response = send("not-utf8", "POST", scan, content=raw, headers=_json)
        assert "not UTF-8" in error(response, 400), raw
    assert "body" in error(send("array", "POST", scan, json=["quick"]), 422)

    # Wrong content types.
    for kwargs in [
        {"content": b'{"scan_type": "quick"}', "headers": {"Content-Type": "text/plain"}},
        {"data": {"scan_type": "quick"}},
        {"files": {"scan_type": ("a.json", b"{}", "application/json")}},
        {"content": b'{"scan_type": "quick"}', "headers": {"Content-Type": ""}},
    ]:
        message = error(send("content type", "POST", scan, **kwargs), 415)
        assert "application/json" in message, kwargs

    # Huge bodies: declared (5 MB JSON) and chunked without a length.
    huge = json.dumps({"scan_type": "quick", "pad": "x" * 5_000_000}).encode()
    assert "too large" in error(send("huge", "POST", scan, content=huge, headers=_json), 413)
    chunks = (b"x" * 65536 for _ in range(80))
    chunked = send("chunked", "POST", backup, content=chunks, headers=_json)
    assert "too large" in error(chunked, 413)

    assert all(400 <= r.status_code < 500 for _, r in answers), [
        (label, r.status_code) for label, r in answers if r.status_code >= 500
    ]
    # The shim still answers, nothing ran, nothing was written.
    ok(admin.get("/api/jobs/stats/all"))
    assert not witness.exists()
    assert _files(stack.backup_root, stack.results_root) == before


def test_secrets_stay_out_of_logs_and_answers(
    stack: Stack, admin: Api, target: LocalTarget, inventory: InventoryFile, tmp_path: Path
):
    """A backup of a directory whose name is a shell command, and a scan, both over real SSH;
    then every log line of the stack and the runs, and every answer, is searched."""
    witness = tmp_path / "witness"
    source = tmp_path / "source"
    hostile = source / f"a b;$(touch {witness})`touch {witness}`"
    hostile.mkdir(parents=True)
    (hostile / "f.txt").write_text("data\n")
    server_id = inventory.add_server(
        target, name=f"evil;touch {witness}", backup={"paths": [str(source)]}
    )
    texts: list[str] = []

    def answer(response: httpx.Response, status: int = 200) -> dict[str, object]:
        texts.append(response.text)
        data: dict[str, object] = ok(response, status)
        return data

    jobs = [
        answer(admin.post(f"/api/servers/{server_id}/backup", json={}), 202)["jobId"],
        answer(admin.post(f"/api/servers/{server_id}/scan", json={"scan_type": "quick"}), 202)[
            "jobId"
        ],
    ]
    for job_id in jobs:
        job = admin.wait_for_state(str(job_id), "completed", "failed")
        assert job["state"] == "completed", job["failedReason"]
        texts.append(admin.get(f"/api/jobs/{job_id}").text)
        with admin.http.stream("GET", f"/api/jobs/{job_id}/events") as stream:
            texts.append(stream.read().decode())
    texts += [admin.get(p).text for p in ("/api/jobs?limit=200", "/api/metrics/system")]
    texts.append(admin.get("/metrics").text)
    # A forged token with the right one's body: refused without echoing it.
    forged = admin.token[:-4] + "AAAA"
    texts.append(
        httpx.get(f"{stack.shim_url}/api/jobs", headers={"Authorization": f"Bearer {forged}"}).text
    )
    assert not witness.exists()

    with stack.sync_client() as client:
        logs = client.read_logs(
            log_filter=LogFilter(
                flow_run_id=LogFilterFlowRunId(any_=[uuid.UUID(str(j)) for j in jobs])
            )
        )
    assert logs, "the runs wrote no logs to Prefect"
    texts += [log.message for log in logs]
    log_files = [p for p in stack.logs_dir.rglob("*") if p.is_file()]
    assert log_files
    texts += [p.read_text(errors="replace") for p in log_files]

    key_body = "".join(
        line
        for line in target.user_key.read_text().splitlines()
        if line and not line.startswith("-----")
    )
    assert len(key_body) > 100
    secrets = {
        "private key": key_body,
        # Its start is the same in every OpenSSH key; its end is this key's own.
        "the end of the private key": key_body[-64:],
        "JWT secret": str(stack.jwt_secret),
        "bearer token": admin.token,
        "forged token": forged,
        "token signature": admin.token.rsplit(".", 1)[1],
    }
    everything = "\n".join(texts)
    leaks = [name for name, secret in secrets.items() if secret in everything]
    assert not leaks, f"leaked: {leaks}"
