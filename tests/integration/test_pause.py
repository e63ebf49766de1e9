"""`medicine-man pause|resume` on the session stack, and pausing one work queue.

Breaks: the update pool is paused while an update runs and two more are enqueued behind it,
first at `low`, then at `critical` priority. Must survive: the running one completes, the held
ones stay `paused` while the pool is, and after `resume` both complete, the critical one first.

Breaks: one work queue (the update pool's `critical` priority) is paused through Prefect's own
`PATCH /api/work_queues/{id}`, which once hung the embedded SQLite server (docs/NOTES.md). Must
survive: the PATCH answers at once, a job on that queue stays Scheduled while a job on another
queue of the same pool runs, and after resume the held job completes.

Breaks: a job waits on a paused work queue of a running pool, watched by `medicine-man watch`
in a process of its own. Must hold: the CLI and the API (one job, and its list by state) both
say `paused`, as they once did not (`waiting` in the API), and both follow it to `completed`.
"""

from __future__ import annotations

import os
import queue
import subprocess
import sys
import threading
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


def _watch(stack: Stack, job_id: str) -> tuple[subprocess.Popen[str], queue.Queue[str]]:
    """`medicine-man watch JOB` as an operator runs it, and the lines of its stderr as they come."""
    env = {**os.environ, "PREFECT_API_URL": stack.api_url}
    if stack.auth_string:
        env["PREFECT_API_AUTH_STRING"] = stack.auth_string
    process = subprocess.Popen(
        [sys.executable, "-m", "deployments.cli.main", "watch", job_id],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    lines: queue.Queue[str] = queue.Queue()

    def read() -> None:
        assert process.stderr is not None
        for line in process.stderr:
            lines.put(line.rstrip("\n"))

    threading.Thread(target=read, daemon=True).start()
    return process, lines


def _first_state(lines: queue.Queue[str], job_id: str, timeout: float) -> str:
    """The first state the watch printed (`paused (Scheduled)`), once it has printed one."""
    deadline = time.monotonic() + timeout
    seen: list[str] = []
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=0.5)
        except queue.Empty:
            continue
        seen.append(line)
        if line.startswith(f"{job_id[:8]}: "):
            return line.removeprefix(f"{job_id[:8]}: ")
    pytest.fail(f"`medicine-man watch` printed no state in {timeout} s: {seen}", pytrace=False)


@pytest.mark.timeout(240)
def test_the_cli_and_the_api_say_paused_for_a_job_on_a_paused_work_queue(
    stack: Stack, api: Api, target: LocalTarget, inventory: InventoryFile
):
    server = inventory.add_server(target, update={"command": "true"}, owners=[api.user_id])
    _set_queue_paused(stack, "update", "critical", paused=True)
    resumed = False
    watcher: subprocess.Popen[str] | None = None
    try:
        held = ok(api.post(f"/api/servers/{server}/update", json={"priority": "critical"}), 202)
        held = held["jobId"]
        watcher, lines = _watch(stack, held)
        cli_state = _first_state(lines, held, timeout=90)
        api_state = api.job(held)["state"]
        assert (cli_state, api_state) == ("paused (Scheduled)", "paused")
        assert held in _listed(api, "paused")
        assert held not in _listed(api, "waiting") + _listed(api, "delayed")

        _set_queue_paused(stack, "update", "critical", paused=False)
        resumed = True
        assert watcher.wait(timeout=120) == 0
        assert watcher.stdout is not None
        assert f"job {held} completed" in watcher.stdout.read()
        assert api.job(held)["state"] == "completed"
    finally:
        if not resumed:
            _set_queue_paused(stack, "update", "critical", paused=False)
        if watcher is not None and watcher.poll() is None:
            watcher.kill()


def _listed(api: Api, state: str) -> list[str]:
    """The ids of the update pool's jobs the API lists as `state`."""
    page = ok(api.get("/api/jobs", params={"state": state, "queue": "update"}))
    return [job["id"] for job in page["jobs"]]


def test_unknown_queue_names_the_allowed_ones():
    result = runner.invoke(cli.app, ["pause", "../backup"])
    assert result.exit_code == 2  # bad input
    assert "unknown queue '../backup'; use one of backup, scan, update" in result.output
