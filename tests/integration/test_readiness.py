"""Ready means ready: the shim's /health is 503, naming what is missing, until Prefect has the
deployments; an enqueue right after its first 200 is accepted; `Stack.start()` (after which
`make up` prints "ready") returns only once /health says ready; /health/live answers all along.
A deployment deleted later turns /health back to 503, naming it, until the bootstrap recreates it.

A stack of its own, started in a thread while the fixture probes it: the session's stack is
bootstrapped long before any test runs, and deleting its deployments would disturb the others.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from uuid import UUID

import httpx
import pytest

from api_shim.gateway.readiness import READY_RECHECK_SECONDS
from deployments.system.local_target import free_port
from deployments.system.stack import Stack
from tasks.core.settings import BackendSettings
from tests.integration.conftest import InventoryFile
from tests.support.api import Api, error, ok

pytestmark = [pytest.mark.slow, pytest.mark.prefect]

USER = "ready-user"


@dataclass
class Start:
    """What the probes saw while the stack started."""

    stack: Stack
    api: Api
    server_id: UUID
    #: The 503 bodies of /health before its first 200, in order.
    not_ready: list[dict[str, Any]] = field(default_factory=list)
    #: The status of /health/live at each of those 503s.
    live: list[int] = field(default_factory=list)
    #: The enqueue sent at once after the first 200.
    enqueued: httpx.Response | None = None
    #: /health as the first thing a caller of `start()` could ask.
    health_after_start: int | None = None


@pytest.fixture(scope="module")
def started(tmp_path_factory: pytest.TempPathFactory, inventory: InventoryFile) -> Iterator[Start]:
    tmp_path: Path = tmp_path_factory.mktemp("ready")
    server_id = inventory.add_server(
        host="127.0.0.1", username="nobody", private_key_file="/nonexistent/id", owners=[USER]
    )
    stack = Stack(
        tmp_path / "stack",
        port=free_port(),
        inventory=inventory.path,
        backup_root=tmp_path / "backups",
        results_root=tmp_path / "results",
        api_port=free_port(),
        ui=False,
        backend=BackendSettings(database_url=None, redis_url=None),
    )
    base = f"http://127.0.0.1:{stack.api_port}"
    assert stack.jwt_secret is not None
    api = Api(base, stack.jwt_secret, USER)
    start = Start(stack, api, server_id)
    failed: list[BaseException] = []

    def run() -> None:
        try:
            stack.start()
            start.health_after_start = httpx.get(f"{base}/health", timeout=10).status_code
        except BaseException as exc:
            failed.append(exc)

    starter = threading.Thread(target=run, daemon=True)
    starter.start()
    try:
        with httpx.Client(base_url=base, timeout=10) as probe:
            deadline = time.monotonic() + 120
            while True:
                assert not failed, failed
                assert time.monotonic() < deadline, f"/health never 200: {start.not_ready[-1:]}"
                try:
                    health = probe.get("/health")
                except httpx.TransportError:  # the shim is not listening yet
                    time.sleep(0.1)
                    continue
                if health.status_code == 200:
                    break
                assert health.status_code == 503, health.text
                start.not_ready.append(health.json())
                start.live.append(probe.get("/health/live").status_code)
                time.sleep(0.1)
            # At once, in the window where /health used to say 200 before the deployments.
            start.enqueued = api.post(f"/api/servers/{server_id}/scan", json={"scan_type": "quick"})
        starter.join(120)
        assert not failed, failed
        yield start
    finally:
        starter.join(120)
        api.close()
        stack.stop()


def test_health_is_503_until_the_deployments_exist_then_an_enqueue_is_accepted(
    started: Start,
) -> None:
    assert started.enqueued is not None and started.enqueued.status_code == 202, (
        started.enqueued and started.enqueued.text
    )
    assert started.health_after_start == 200
    # The shim listens before the bootstrap runs `prefect deploy`, which takes seconds.
    assert started.not_ready, "never saw /health before the deployments existed"
    first = started.not_ready[0]
    assert first["success"] is False
    assert first["data"]["status"] == "not_ready"
    assert "deployment backup/backup" in first["data"]["missing"]
    assert "deployment backup/backup" in first["message"]
    # Alive while not ready: a liveness probe must not restart it.
    assert set(started.live) == {200}


def test_a_deleted_deployment_is_named_by_health_until_the_bootstrap_recreates_it(
    started: Start,
) -> None:
    stack, api = started.stack, started.api
    scan = f"/api/servers/{started.server_id}/scan"
    assert ok(httpx.get(f"{stack.shim_url}/health", timeout=10)) == {"status": "ok", "missing": []}
    with stack.sync_client() as client:
        client.delete_deployment(client.read_deployment_by_name("scan/scan").id)
    # The last complete look is kept READY_RECHECK_SECONDS; then /health looks again.
    health = wait_for_health(stack, 503, READY_RECHECK_SECONDS + 10)
    body = health.json()
    assert body["data"] == {"status": "not_ready", "missing": ["deployment scan/scan"]}
    assert "deployment scan/scan" in body["message"]
    # The two agree: an enqueue is refused too, saying why.
    assert "not registered" in error(api.post(scan, json={"scan_type": "quick"}), 503)
    assert httpx.get(f"{stack.shim_url}/health/live", timeout=10).status_code == 200

    stack.bootstrap()
    wait_for_health(stack, 200, 30)
    ok(api.post(scan, json={"scan_type": "quick"}), 202)


def wait_for_health(stack: Stack, status: int, timeout: float) -> httpx.Response:
    deadline = time.monotonic() + timeout
    while True:
        health = httpx.get(f"{stack.shim_url}/health", timeout=10)
        if health.status_code == status:
            return health
        assert time.monotonic() < deadline, f"/health not {status} in {timeout} s: {health.text}"
        time.sleep(0.2)
