"""`medicine-man pause|resume` on the session stack, and pausing one work queue.

Breaks: the update pool is paused while an update runs and two more are enqueued behind it,
first at `low`, then at `critical` priority. Must survive: the running one completes, the held
ones stay `paused` while the pool is, and after `resume` both complete, the critical one first.

Breaks: one work queue (the update pool's `critical` priority) is paused through Prefect's own
`PATCH /api/work_queues/{id}`, which once hung the embedded SQLite server (docs/NOTES.md). Must
survive: the PATCH answers at once, a job on that queue stays Scheduled while a job on another
queue of the same pool runs, and after resume the held job completes.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import pytest
from prefect.client.schemas.objects import StateType
from typer.testing import CliRunner

from deployments.cli import main as cli
from deployments.system.local_target import LocalTarget
from deployments.system.stack import Stack
from tests.integration.conftest import InventoryFile
from tests.support.api import Api, ok

runner = CliRunner()
#: Seconds a work queue's pause or resume may take: an update of one row. It once took >200 s.
PATCH_SECONDS = 10.0
#: Seconds the held jobs must stay held after the pool could have run them: the worker polls
#: at once on a run's event, and every 5 s (`deployments.system.stack.POLL_SECONDS`).
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
    slow = inventory.add_server(target, update={"command": "sleep 2"}, owners=[api.user_id])
    quick = inventory.add_server(target, update={"command": "true"}, owners=[api.user_id])
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


def _set_queue_paused(stack: Stack, pool: str, queue: str, paused: bool) -> float:
    """Pause or resume one work queue of `pool` through Prefect's client; the seconds it took."""
    with stack.sync_client() as client:
        work_queue = client.read_work_queue_by_name(queue, work_pool_name=pool)
        began = time.monotonic()
        client.update_work_queue(work_queue.id, is_paused=paused)
        took = time.monotonic() - began
        assert client.read_work_queue(work_queue.id).is_paused is paused
    return took


def _state_type(stack: Stack, job_id: str) -> StateType | None:
    with stack.sync_client() as client:
        state = client.read_flow_run(uuid.UUID(job_id)).state
    return state.type if state is not None else None


@pytest.mark.timeout(240)
def test_paused_work_queue_holds_its_jobs_while_the_pool_runs_others(
    stack: Stack, api: Api, target: LocalTarget, inventory: InventoryFile
):
    server = inventory.add_server(target, update={"command": "true"}, owners=[api.user_id])
    took = _set_queue_paused(stack, "update", "critical", paused=True)
    try:
        assert took < PATCH_SECONDS, f"pausing one work queue took {took:.1f} s"
        held = ok(api.post(f"/api/servers/{server}/update", json={"priority": "critical"}), 202)
        held = held["jobId"]
        other = ok(api.post(f"/api/servers/{server}/update", json={"priority": "low"}), 202)
        other = other["jobId"]

        # The lower priority runs: only the paused queue is held, not its pool ...
        assert api.wait_for_state(other, "completed", "failed", timeout=90)["state"] == "completed"
        # ... and the pool, free again, still does not hand out the held one.
        deadline = time.monotonic() + HELD_SECONDS
        while time.monotonic() < deadline:
            assert _state_type(stack, held) == StateType.SCHEDULED
            time.sleep(0.25)
    finally:
        took = _set_queue_paused(stack, "update", "critical", paused=False)
    assert took < PATCH_SECONDS, f"resuming one work queue took {took:.1f} s"

    assert api.wait_for_state(held, "completed", "failed", timeout=90)["state"] == "completed"
    assert _started_at(stack, other) < _started_at(stack, held)


def test_unknown_queue_names_the_allowed_ones():
    result = runner.invoke(cli.app, ["pause", "../backup"])
    assert result.exit_code == 1
    assert "unknown queue '../backup'; use one of backup, scan, update" in result.output
