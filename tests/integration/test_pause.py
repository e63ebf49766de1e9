"""`medicine-man pause|resume` on the session stack.

Breaks: the update pool is paused while an update runs and two more are enqueued behind it,
first at `low`, then at `critical` priority. Must survive: the running one completes, the held
ones stay `paused` while the pool is, and after `resume` both complete, the critical one first.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import pytest
from typer.testing import CliRunner

from deployments import cli
from deployments.local_target import LocalTarget
from deployments.stack import Stack
from tests.integration.conftest import InventoryFile
from tests.support.api import Api, ok

runner = CliRunner()
#: Seconds the held jobs must stay held after the pool could have run them: the worker polls
#: at once on a run's event, and every 5 s (`deployments.stack.POLL_SECONDS`).
HELD_SECONDS = 6.0


@pytest.fixture
def api(stack: Stack) -> Iterator[Api]:
    assert stack.shim_url and stack.jwt_secret
    with Api(stack.shim_url, stack.jwt_secret, f"pauser-{uuid.uuid4().hex[:6]}") as api:
        yield api


def _cli(*args: str) -> str:
    result = runner.invoke(cli.app, list(args))
    assert result.exit_code == 0, result.output
    return result.output


def _started_at(stack: Stack, job_id: str) -> float:
    with stack.sync_client() as client:
        states = client.read_flow_run_states(uuid.UUID(job_id))
    return min(s.timestamp.timestamp() for s in states if s.is_running())


def test_paused_pool_holds_new_jobs_and_resumes_by_priority(
    stack: Stack, api: Api, target: LocalTarget, inventory: InventoryFile
):
    slow = inventory.add_server(target, update={"command": "sleep 2"})
    quick = inventory.add_server(target, update={"command": "true"})
    running = ok(api.post(f"/api/servers/{slow}/update"), 202)["jobId"]
    api.wait_for_state(running, "active", "completed", timeout=60)
    try:
        assert "paused update" in _cli("pause", "update")
        low = ok(api.post(f"/api/servers/{quick}/update", json={"priority": "low"}), 202)["jobId"]
        critical = ok(api.post(f"/api/servers/{quick}/update", json={"priority": "critical"}), 202)
        critical = critical["jobId"]

        # The running job is not interrupted by the pause ...
        assert api.wait_for_state(running, "completed", "failed")["state"] == "completed"
        # ... and the pool, free now, still hands out none of the held ones.
        deadline = time.monotonic() + HELD_SECONDS
        while time.monotonic() < deadline:
            assert [api.job(j)["state"] for j in (low, critical)] == ["paused", "paused"]
            time.sleep(0.25)
    finally:
        assert "resumed update" in _cli("resume", "update")

    for job_id in (low, critical):
        assert api.wait_for_state(job_id, "completed", "failed")["state"] == "completed"
    assert _started_at(stack, critical) < _started_at(stack, low)


def test_unknown_queue_names_the_allowed_ones():
    result = runner.invoke(cli.app, ["pause", "../backup"])
    assert result.exit_code == 1
    assert "unknown queue '../backup'; use one of backup, scan, update" in result.output
