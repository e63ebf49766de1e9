"""Queue and system metrics, the health verdict, cleaning, and a shim whose Prefect is down."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator

import httpx
import pytest

from api_shim.metrics import verdict
from api_shim.schemas import QueueCounts
from deployments.system.local_target import free_port
from deployments.system.stack import PROJECT_DIR, Stack
from tasks.core.callers import mint_token
from tests.support.api import Api, error, ok

QUEUE_FIELDS = {
    "waiting",
    "active",
    "completed",
    "failed",
    "delayed",
    "paused",
    "cancelled",
    "total",
}


@pytest.fixture(scope="module")
def admin(stack: Stack) -> Iterator[Api]:
    assert stack.shim_url and stack.jwt_secret
    with Api(stack.shim_url, stack.jwt_secret, "root", role="admin") as api:
        yield api


def test_queue_metrics_count_every_state_and_judge_health(stack: Stack, admin: Api):
    data = ok(admin.get("/api/metrics/queues"))
    assert set(data) == {"backup", "scan", "update", "health"}
    for queue in ("backup", "scan", "update"):
        assert set(data[queue]) == QUEUE_FIELDS
        assert sum(v for k, v in data[queue].items() if k != "total") == data[queue]["total"]
    assert data["health"]["status"] in {"healthy", "degraded"}
    assert data["health"]["message"]
    # A user's counts are of their jobs on their servers: none for one who owns none.
    with Api(stack.shim_url or "", stack.jwt_secret or "", "someone") as user:
        counts = ok(user.get("/api/metrics/queues"))
        assert all(counts[q]["total"] == 0 for q in ("backup", "scan", "update"))
        assert all(q["total"] == 0 for q in ok(user.get("/api/metrics/system"))["queues"].values())


def test_system_metrics_report_prefect_workers_and_queues(admin: Api):
    data = ok(admin.get("/api/metrics/system"))
    assert data["prefect"]["reachable"] is True and data["prefect"]["version"]
    assert {w["queue"]: w["online"] >= 1 for w in data["workers"]} == {
        "backup": True, "scan": True, "update": True
    }  # fmt: skip
    assert set(data["queues"]) == {"backup", "scan", "update"}
    assert data["status"] == data["health"]["status"]
    assert data["uptimeSeconds"] > 0


def test_clean_with_the_defaults_keeps_a_young_session(admin: Api):
    # Every run of a test session is younger than 7 days and fewer than 1000 per queue.
    data = ok(admin.post("/api/jobs/clean", json={}))
    assert data == {"deleted": 0, "byQueue": {"backup": 0, "scan": 0, "update": 0}}
    assert "older_than_seconds" in error(
        admin.post("/api/jobs/clean", json={"older_than_seconds": -1}), 422
    )


@pytest.mark.parametrize(
    ("counts", "workers", "status", "says"),
    [
        ({"backup": QueueCounts(completed=10, total=10)}, {"backup": 1}, "healthy", "normally"),
        ({"backup": QueueCounts(waiting=101, total=101)}, {"backup": 1}, "degraded", "101 jobs"),
        ({"backup": QueueCounts(waiting=100, total=100)}, {"backup": 1}, "healthy", "normally"),
        ({"scan": QueueCounts(failed=2, completed=18, total=20)}, {"scan": 1}, "healthy", ""),
        ({"scan": QueueCounts(failed=3, completed=17, total=20)}, {"scan": 1}, "degraded", "15%"),
        ({"update": QueueCounts()}, {"update": 0}, "degraded", "no live worker"),
    ],
)
def test_health_verdict(counts, workers, status, says):
    health = verdict(counts, workers)
    assert health.status == status
    assert says in health.message


@pytest.fixture
def orphan_shim(tmp_path) -> Iterator[tuple[str, str]]:
    """A shim whose Prefect API is a port nobody listens on."""
    port, secret = free_port(), uuid.uuid4().hex * 2
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MM_"))},
        "PREFECT_API_URL": f"http://127.0.0.1:{free_port()}/api",
        "PREFECT_HOME": str(tmp_path),
        "MM_JWT_SECRET": secret,
    }
    argv = [sys.executable, "-m", "uvicorn", "api_shim.app:app", "--port", str(port)]
    log = open(tmp_path / "shim.log", "wb")
    process = subprocess.Popen(argv, env=env, cwd=PROJECT_DIR, stdout=log, stderr=log)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                httpx.get(f"{url}/openapi.json", timeout=1)
                break
            except httpx.TransportError:
                assert process.poll() is None, (tmp_path / "shim.log").read_text()
                assert time.monotonic() < deadline, "the shim did not start"
                time.sleep(0.2)
        yield url, secret
    finally:
        process.terminate()
        process.wait(15)
        log.close()


def test_without_prefect_the_shim_answers_503_saying_so(orphan_shim):
    url, secret = orphan_shim
    headers = {"Authorization": f"Bearer {mint_token(secret, 'root', 'admin')}"}
    with httpx.Client(base_url=url, headers=headers, timeout=30) as client:
        health = client.get("/health")
        assert health.status_code == 503
        assert health.json()["data"] == {"status": "unavailable", "missing": ["Prefect API"]}
        assert "Prefect API is unavailable" in error(health, 503)
        # Open to all: the reason, with Prefect's address, is in the shim's log only.
        assert "127.0.0.1" not in health.text and "http" not in health.text
        # Alive all the same: a liveness probe must not restart a shim that cannot help it.
        assert ok(client.get("/health/live")) == {"status": "alive"}
        message = error(client.get("/api/metrics/queues"), 503)
        assert "unhealthy" in message.lower() and "cannot be reached" in message
        assert "cannot be reached" in error(client.get("/api/jobs"), 503)
        assert "cannot be reached" in error(client.get(f"/api/jobs/{uuid.uuid4()}"), 503)


@pytest.mark.parametrize(("secret", "says"), [(None, "not set"), ("change-me", "at least 32")])
def test_the_shim_refuses_to_start_without_a_strong_secret(tmp_path, secret, says):
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MM_"))},
        "PREFECT_API_URL": "http://127.0.0.1:9/api",
        "PREFECT_HOME": str(tmp_path),
        **({"MM_JWT_SECRET": secret} if secret else {}),
    }
    argv = [sys.executable, "-m", "uvicorn", "api_shim.app:app", "--port", str(free_port())]
    result = subprocess.run(
        argv, env=env, cwd=PROJECT_DIR, capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode != 0
    assert "MM_JWT_SECRET" in result.stderr
    assert says in result.stderr
