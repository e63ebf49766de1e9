"""The fork-server worker (deployments/worker/forkserver.py): isolated runs, and the stock fallback.

Limits, retries, crashes and cancellation of forked runs are tested by the other integration
tests, which run on the fork-server worker (the stack's default).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from uuid import UUID

from deployments.control.queues import QUEUES
from deployments.system.local_target import descendants
from deployments.system.stack import FORKSERVER, POLL_SECONDS, Stack
from deployments.worker.forkserver import DRAIN_SIGNAL, PRELOAD
from tests.support.processes import fork_servers


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:  # It ended meanwhile.
        return b""


def test_the_preloaded_modules_start_no_thread() -> None:
    """Forking is safe only from a single-threaded process: importing PRELOAD must start none."""
    code = (
        "import importlib, threading\n"
        f"for name in {list(PRELOAD)!r}: importlib.import_module(name)\n"
        "print(sorted(t.name for t in threading.enumerate()))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert result.stdout.strip() == "['MainThread']", result.stdout + result.stderr


def test_each_run_is_a_process_of_its_own_forked_below_the_worker(
    stack: Stack, target, inventory, run_job, wait_for_final_state
) -> None:
    server_id = inventory.add_server(target)
    run_ids = [
        run_job("scan/scan", {"server_id": str(server_id), "job_type": "scan:quick"})
        for _ in range(3)
    ]
    runs = [wait_for_final_state(run_id) for run_id in run_ids]
    assert all(run.state is not None and run.state.is_completed() for run in runs), [
        run.state for run in runs
    ]
    pids = {int(str(run.infrastructure_pid).rsplit(":", 1)[-1]) for run in runs}
    worker = stack.workers["scan"]
    assert any(
        b"multiprocessing.forkserver" in _cmdline(pid) for pid in descendants(worker.pid or 0)
    ), "no fork server below the worker"
    assert len(pids) == 3, pids
    assert worker.pid not in pids
    # Each run's process ends soon after its final state (Prefect drains its logs first).
    deadline = time.monotonic() + 15
    while pids & set(descendants(worker.pid or 0)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not pids & set(descendants(worker.pid or 0))


def test_one_process_serves_every_pool_from_one_fork_server(
    stack: Stack, target, inventory, run_job, wait_for_final_state, tmp_path: Path
) -> None:
    """deployments/worker/serve.py: the pools' workers share one process and its fork server,
    and each pool keeps a worker of its own in Prefect (name, limit, registration)."""
    worker = stack.workers["scan"]
    assert worker.pid is not None
    assert all(stack.workers[queue.name] is worker for queue in QUEUES), stack.workers
    assert set(worker.pools) == {queue.name for queue in QUEUES}, worker.pools
    with stack.sync_client() as client:
        for queue in QUEUES:
            names = {w.name for w in client.read_workers_for_work_pool(queue.name)}
            assert stack.worker_name(queue.name) in names, (queue.name, names)
    source = tmp_path / "data"
    source.mkdir()
    (source / "file.txt").write_text("one process\n")
    server_id = inventory.add_server(
        target, backup={"paths": [str(source)]}, update={"command": "true"}
    )
    run_ids = {
        "backup": run_job("backup/backup", {"server_id": str(server_id)}),
        "scan": run_job("scan/scan", {"server_id": str(server_id), "job_type": "scan:quick"}),
        "update": run_job("update/update", {"server_id": str(server_id)}),
    }
    pids = {}
    for pool, run_id in run_ids.items():
        run = wait_for_final_state(run_id)
        assert run.state is not None and run.state.is_completed(), (pool, run.state)
        pids[pool] = int(str(run.infrastructure_pid).rsplit(":", 1)[-1])
    # Each pool's run was a process of its own, and the one worker process has one fork server.
    assert len(set(pids.values())) == 3, pids
    assert len(fork_servers(worker.pid)) == 1, "not one fork server for all pools"
    assert worker.pid not in pids.values()
    assert stack.workers["scan"].pid == worker.pid, "the worker process was restarted"


def test_the_stock_process_worker_still_serves_the_pool(
    stack: Stack, target, inventory, run_job, wait_for_final_state
) -> None:
    server_id = inventory.add_server(target)
    stack.stop_worker("scan")
    try:
        stock = stack.start_worker("scan", worker_type="process")
        assert stock.pools == ("scan",), stock.pools
        run_id: UUID = run_job("scan/scan", {"server_id": str(server_id), "job_type": "scan:quick"})
        run = wait_for_final_state(run_id)
        assert run.state is not None and run.state.is_completed(), run.state
        # This worker's own lines only: the log file is appended to across restarts.
        log = stock.log_path.read_bytes().decode(errors="replace").rsplit(" started!", 1)[-1]
        assert f"submitting flow run '{run_id}'" in log, log
        worker_pid = stack.workers["scan"].pid or 0
        assert not any(
            b"multiprocessing.forkserver" in _cmdline(pid) for pid in descendants(worker_pid)
        ), "the stock worker started a fork server"
    finally:
        stack.stop_worker("scan")
        stack.start_worker("scan")


def test_a_new_run_is_picked_up_on_its_event_not_at_the_next_poll(
    stack: Stack, target, inventory, run_job, wait_for_final_state
) -> None:
    """With polls two minutes apart, only the pool's event stream can start the run sooner."""
    server_id = inventory.add_server(target)
    stack.stop_worker("scan")
    stack.extra_env["PREFECT_WORKER_QUERY_SECONDS"] = "120"
    try:
        stack.start_worker("scan")
        # The worker's first poll is at its start: let it pass, so the next is 2 minutes away.
        time.sleep(3)
        run_id = run_job("scan/scan", {"server_id": str(server_id), "job_type": "scan:quick"})
        run = wait_for_final_state(run_id, timeout=60)  # Half the poll interval.
        assert run.state is not None and run.state.is_completed(), run.state
    finally:
        del stack.extra_env["PREFECT_WORKER_QUERY_SECONDS"]
        stack.stop_worker("scan")
        stack.start_worker("scan")


def test_a_draining_worker_takes_no_more_runs_and_its_successor_does(
    stack: Stack, target, inventory, run_job, wait_for_final_state
) -> None:
    """The first step of the stack's stop: after `DRAIN_SIGNAL`, neither the pool's events nor
    the interval poll start a run; the run waits for the next worker, which starts it."""
    server_id = inventory.add_server(target)
    worker = stack.workers["scan"]
    assert worker.drains and worker.pid is not None
    os.kill(worker.pid, DRAIN_SIGNAL)
    try:
        run_id = run_job("scan/scan", {"server_id": str(server_id), "job_type": "scan:quick"})
        # Past the event's wake-up and two of the worker's interval polls (POLL_SECONDS).
        time.sleep(2 * POLL_SECONDS[FORKSERVER] + 2)
        with stack.sync_client() as client:
            run = client.read_flow_run(run_id)
        assert run.state is not None and run.state.is_scheduled(), run.state
        assert worker.alive(), "the drain signal stopped the worker"
    finally:
        stack.stop_worker("scan")
        stack.start_worker("scan")
    run = wait_for_final_state(run_id)
    assert run.state is not None and run.state.is_completed(), run.state
