"""Nothing of a fork-server worker outlives its owner, and a run is reported only once dead.

deployments/worker/lifeline.py ties the fork server to its worker and each run to the fork
server; deployments/worker/forkserver.py (`end_orphan`) makes sure a run whose fork server is
gone is dead before it is reported. The runs are updates that sleep on the target.
"""

from __future__ import annotations

import os
import signal
import time
from datetime import UTC, datetime, timedelta
from uuid import UUID

import pytest
from prefect.client.schemas.objects import State, StateType

from deployments.system.stack import Stack
from deployments.worker import lifeline
from tests.support.processes import fork_servers

POOL = "update"
#: Seconds within which a process must be gone once its owner is.
GONE_WITHIN = 5.0
#: How much earlier than we saw the run gone its Crashed state may be: we look every 20 ms,
#: and the report is an API call after the worker saw the death. Before the fix the run lived
#: on for its whole sleep after being reported.
SLACK = timedelta(seconds=0.5)


def _running_pid(stack: Stack, run_id: UUID, timeout: float = 60) -> int:
    """The pid the worker recorded for the run, once the run is Running."""
    deadline = time.monotonic() + timeout
    with stack.sync_client() as client:
        while time.monotonic() < deadline:
            run = client.read_flow_run(run_id)
            if run.state is not None and run.state.is_running() and run.infrastructure_pid:
                return int(str(run.infrastructure_pid).rsplit(":", 1)[-1])
            time.sleep(0.2)
    pytest.fail(f"flow run {run_id} did not get running within {timeout} s")


def _fork_server(stack: Stack) -> int:
    """The worker's child that runs the fork server (its runs, forked, share its command line)."""
    worker = stack.workers[POOL].pid
    assert worker is not None
    found = fork_servers(worker)
    if not found:
        pytest.fail(f"no fork server below the {POOL} worker")
    return found[0]


def _wait_gone(processes: dict[str, tuple[int, int | None]]) -> datetime:
    """Until every (pid, start time) is gone; when that was seen. Fails naming the survivors."""
    deadline = time.monotonic() + GONE_WITHIN
    while True:
        alive = {
            name: p for name, (p, started) in processes.items() if lifeline.is_alive(p, started)
        }
        if not alive:
            return datetime.now(UTC)
        if time.monotonic() > deadline:
            pytest.fail(f"still alive {GONE_WITHIN} s after their owner: {alive}")
        time.sleep(0.02)


def _states(stack: Stack, run_id: UUID) -> list[State]:
    with stack.sync_client() as client:
        return sorted(client.read_flow_run_states(run_id), key=lambda s: s.timestamp)


def _history(states: list[State]) -> str:
    return "\n".join(f"{s.timestamp:%T.%f} {s.name}: {(s.message or '')[:100]}" for s in states)


def test_a_killed_worker_takes_its_fork_server_and_runs_along(
    stack: Stack, target, inventory, run_job
) -> None:
    """kill -9 the worker while a run sleeps inside it.

    Breaks: the worker, SIGKILLed alone (its group), as in a crash. Must survive: nothing of it;
    its fork server and the run are gone within seconds (before, both lived on with parent 1),
    and nobody reported the run Crashed while it was alive.
    """
    server_id = inventory.add_server(target, update={"command": "sleep 60"})
    run_id = run_job(f"{POOL}/{POOL}", {"server_id": str(server_id)})
    try:
        run = _running_pid(stack, run_id)
        server = _fork_server(stack)
        assert server != run
        processes = {
            "fork server": (server, lifeline.start_time(server)),
            "flow run": (run, lifeline.start_time(run)),
        }
        time.sleep(1)  # Inside the remote sleep now.
        assert all(lifeline.is_alive(p, s) for p, s in processes.values()), processes
        stack.kill_worker(POOL)
        gone = _wait_gone(processes)
        states = _states(stack, run_id)
        early = [s for s in states if s.type is StateType.CRASHED and s.timestamp < gone - SLACK]
        assert not early, _history(states)
    finally:
        stack.start_worker(POOL)
        with stack.sync_client() as client:  # Not to be run again by the re-run automation.
            client.delete_flow_run(run_id)


def test_a_run_whose_fork_server_died_is_reported_once_and_only_once_dead(
    stack: Stack, target, inventory, run_job
) -> None:
    """kill -9 the fork server alone while a run sleeps inside it; the worker lives.

    Breaks: the fork server, and with it the pipe that carries the run's exit status. Must
    survive: the run dies with it; the worker reports it Crashed once, not before it was dead
    (before, it took the lost pipe for exit status 255 and reported a live run, which went on);
    the re-run automation runs it again on a new fork server, where it refuses to send the
    update command a second time (its end was never seen: tasks/update.py) and fails saying so.
    """
    server_id = inventory.add_server(target, update={"command": "sleep 5"})
    run_id = run_job(f"{POOL}/{POOL}", {"server_id": str(server_id)})
    log = stack.workers[POOL].log_path
    offset = log.stat().st_size
    run = _running_pid(stack, run_id)
    server = _fork_server(stack)
    assert server != run
    processes = {"flow run": (run, lifeline.start_time(run))}
    time.sleep(1)
    assert lifeline.is_alive(*processes["flow run"])
    os.kill(server, signal.SIGKILL)
    gone = _wait_gone(processes)

    # Crashed is final too: wait for the run the re-run automation scheduled again.
    deadline = time.monotonic() + 120
    with stack.sync_client() as client:
        while True:
            final = client.read_flow_run(run_id)
            done = final.state is not None and (
                final.state.is_completed() or final.state.is_failed()
            )
            if done or time.monotonic() > deadline:
                break
            time.sleep(0.5)
    states = _states(stack, run_id)
    history = _history(states)
    crashes = [s for s in states if s.type is StateType.CRASHED]
    assert len(crashes) == 1, history
    assert crashes[0].timestamp >= gone - SLACK, history
    assert final.state is not None and final.state.is_failed(), history
    assert "it is not run again" in (final.state.message or ""), history
    assert final.run_count == 2, history
    said = log.read_bytes()[offset:].decode(errors="replace")
    assert f"The fork server of flow run {run_id} is gone" in said, said[-3000:]
