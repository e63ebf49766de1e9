"""Ready means ready: the shim's /health is 503, naming what is missing, until Prefect has the
deployments; an enqueue right after its first 200 is accepted; `Stack.start()` returns only
once /health says ready; /health/live answers all along.

A stack of its own, started in a thread while the test probes it: the session's stack is
bootstrapped long before any test runs, and deleting its deployments would disturb the others.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx
import pytest

from deployments.system.local_target import free_port
from deployments.system.stack import Stack
from tasks.core.settings import BackendSettings
from tests.integration.conftest import InventoryFile
from tests.support.api import Api

pytestmark = [pytest.mark.slow, pytest.mark.prefect]


def test_health_is_503_until_the_deployments_exist_then_an_enqueue_is_accepted(
    tmp_path: Path, inventory: InventoryFile
) -> None:
    user = "ready-user"
    server_id = inventory.add_server(
        host="127.0.0.1", username="nobody", private_key_file="/nonexistent/id", owners=[user]
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
    outcome: dict[str, object] = {}

    def start() -> None:
        try:
            stack.start()
            # The first thing a caller of start() could do.
            outcome["health after start"] = httpx.get(f"{base}/health", timeout=10).status_code
        except BaseException as exc:
            outcome["error"] = exc

    starter = threading.Thread(target=start, daemon=True)
    starter.start()
    not_ready: list[dict[str, object]] = []
    try:
        assert stack.jwt_secret is not None
        with (
            httpx.Client(base_url=base, timeout=10) as probe,
            Api(base, stack.jwt_secret, user) as api,
        ):
            deadline = time.monotonic() + 120
            while True:
                assert "error" not in outcome, outcome.get("error")
                assert time.monotonic() < deadline, f"/health never 200; saw {not_ready[-1:]}"
                try:
                    health = probe.get("/health")
                except httpx.TransportError:  # the shim is not listening yet
                    time.sleep(0.05)
                    continue
                if health.status_code == 200:
                    break
                assert health.status_code == 503, health.text
                not_ready.append(health.json())
                # Alive while not ready: a liveness probe must not restart it.
                assert probe.get("/health/live").status_code == 200
                time.sleep(0.05)
            # At once, in the window where /health used to say 200 before the deployments.
            enqueued = api.post(f"/api/servers/{server_id}/scan", json={"scan_type": "quick"})
            assert enqueued.status_code == 202, enqueued.text
        starter.join(120)
        assert outcome.get("health after start") == 200, outcome
    finally:
        starter.join(120)
        stack.stop()
    # The shim listens before the bootstrap runs `prefect deploy`, which takes seconds.
    assert not_ready, "never saw /health before the deployments existed"
    first = not_ready[0]
    assert first["success"] is False
    data = first["data"]
    assert isinstance(data, dict)
    assert data["status"] == "not_ready"
    assert "deployment backup/backup" in data["missing"]
    assert "deployment backup/backup" in str(first["message"])
