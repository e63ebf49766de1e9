"""Backup pings against a local HTTP receiver standing for Healthchecks and Uptime Kuma: a real
sshd backup with `backup.ping_url` sends start then success; a failing one sends fail with its
reason; an unreachable ping URL does not fail the backup, and its warning hides the token."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import pytest
from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

from deployments.system.local_target import free_port
from tests.support.trees import make_tree


@dataclass(frozen=True)
class Received:
    method: str
    path: str
    query: dict[str, list[str]]
    body: str


class Receiver:
    """An HTTP server on loopback that records each request and answers 200."""

    def __init__(self) -> None:
        self.requests: list[Received] = []
        received = self.requests

        class Handler(BaseHTTPRequestHandler):
            def _record(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length).decode() if length else ""
                parts = urlsplit(self.path)
                received.append(
                    Received(
                        self.command,
                        parts.path,
                        parse_qs(parts.query, keep_blank_values=True),
                        body,
                    )
                )
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"OK")

            do_GET = do_POST = _record

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def of(self, path_prefix: str) -> list[Received]:
        return [r for r in self.requests if r.path.startswith(path_prefix)]


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    found = Receiver()
    found.thread.start()
    yield found
    found.server.shutdown()
    found.server.server_close()


def test_a_backup_pings_start_then_success_with_its_run_id(
    stack, target, inventory, run_job, wait_for_final_state, receiver, tmp_path
):
    token = uuid.uuid4().hex
    source = make_tree(tmp_path / "source", big_bytes=10_000)
    server_id = inventory.add_server(
        target, backup={"paths": [str(source)], "ping_url": f"{receiver.url}/ping/{token}"}
    )
    run_id = run_job("backup/backup", {"server_id": str(server_id)})
    run = wait_for_final_state(run_id)
    assert run.state.is_completed(), run.state.message
    got = receiver.of(f"/ping/{token}")
    assert [(r.method, r.path) for r in got] == [
        ("GET", f"/ping/{token}/start"),
        ("GET", f"/ping/{token}"),
    ]
    assert all(r.query["rid"] == [str(run_id)] for r in got)


def test_a_failing_backup_pings_fail_with_the_reason(
    stack, target, inventory, run_job, wait_for_final_state, receiver, tmp_path
):
    token, kuma = uuid.uuid4().hex, uuid.uuid4().hex
    missing = str(tmp_path / "not-there")
    hc_server = inventory.add_server(
        target, backup={"paths": [missing], "ping_url": f"{receiver.url}/ping/{token}"}
    )
    kuma_server = inventory.add_server(
        target, backup={"paths": [missing], "ping_url": f"{receiver.url}/api/push/{kuma}?ping="}
    )
    for server_id in (hc_server, kuma_server):
        run = wait_for_final_state(run_job("backup/backup", {"server_id": str(server_id)}))
        assert run.state.is_failed(), run.state
    start, fail = receiver.of(f"/ping/{token}")
    assert (start.method, start.path) == ("GET", f"/ping/{token}/start")
    assert (fail.method, fail.path) == ("POST", f"/ping/{token}/fail")
    assert "not-there" in fail.body and len(fail.body) <= 1000
    # Uptime Kuma: no start, one `down` push with the reason as its message.
    [push] = receiver.of(f"/api/push/{kuma}")
    assert push.method == "GET" and push.query["status"] == ["down"]
    assert "not-there" in push.query["msg"][0] and push.query["ping"] == [""]


def test_an_unreachable_ping_url_does_not_fail_the_backup(
    stack, target, inventory, run_job, wait_for_final_state, tmp_path
):
    token = uuid.uuid4().hex
    source = make_tree(tmp_path / "source", big_bytes=10_000)
    nobody = f"http://127.0.0.1:{free_port()}/ping/{token}"
    server_id = inventory.add_server(target, backup={"paths": [str(source)], "ping_url": nobody})
    run_id = run_job("backup/backup", {"server_id": str(server_id)})
    run = wait_for_final_state(run_id)
    assert run.state.is_completed(), run.state.message
    # Each of the two pings tried 3 times, refused at once: a second or two of the run.
    assert run.total_run_time.total_seconds() < 60
    # The run's logs reach Prefect in batches, the last ones after the run ended.
    deadline = time.monotonic() + 20
    while True:
        with stack.sync_client() as client:
            logs = client.read_logs(
                log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run_id]))
            )
        text = "\n".join(entry.message for entry in logs)
        if text.count("ping GET to http://127.0.0.1:") >= 2 or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert text.count("ping GET to http://127.0.0.1:") == 2, text
    assert "the backup goes on" in text
    assert token not in text
