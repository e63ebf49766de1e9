"""kill -9 of `make up`'s supervisor while the demo's jobs run, then `make up` again, stopped by
two signals to its process group.

Breaks: the supervisor dies without a word (SIGKILL), with the Prefect server, three workers
with their fork servers and the jobs' runs, the shim and the demo's sshd below it; later, a
Ctrl-C to the whole group is followed by a second one during the stop. Must survive: within
10 s no process the first stack started is left (each dies with its parent:
deployments/worker/lifeline.py); the next `make up` on the same data directory and ports
starts, and the jobs the kill interrupted end once (crashed by that start, run again,
completed); the double signal stops it cleanly (exit 0), leaving no process of its own.
"""

from __future__ import annotations

import itertools
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from uuid import UUID

import pytest
from prefect.client.orchestration import SyncPrefectClient
from prefect.client.schemas.objects import State, StateType

from deployments.system.local_target import free_port
from tests.support.processes import left_alive, process_tree

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

#: States that end one run of a flow run.
ENDS = {StateType.COMPLETED, StateType.FAILED, StateType.CRASHED, StateType.CANCELLED}


def _up(
    tmp_path: Path, output: Path, ports: tuple[int, int], *extra: str
) -> subprocess.Popen[bytes]:
    env = {**os.environ, "COLUMNS": "200", "DO_NOT_TRACK": "1"}
    with output.open("wb") as sink:
        return subprocess.Popen(
            [
                sys.executable, "-m", "deployments.system.up", *extra,
                "--data-dir", str(tmp_path / "var"),
                "--port", str(ports[0]), "--api-port", str(ports[1]),
                "--inventory", str(tmp_path / "inventory.yaml"),
            ],
            cwd=ROOT, env=env, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip


def _wait_for(output: Path, needle: str, process: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = output.read_text(errors="replace") if output.exists() else ""
        if needle in text:
            return
        assert process.poll() is None, f"exited with {process.returncode}:\n{text[-3000:]}"
        time.sleep(0.3)
    raise AssertionError(f"{needle!r} not printed within {timeout} s:\n{text[-3000:]}")


def _final_histories(
    data_dir: Path, port: int, job_ids: list[str], timeout: float
) -> dict[str, list[State]]:
    """Each job's state history once it is final (fails after `timeout` s)."""
    auth = (data_dir / "prefect-auth").read_text().strip()
    deadline = time.monotonic() + timeout
    with SyncPrefectClient(api=f"http://127.0.0.1:{port}/api", auth_string=auth) as client:
        while True:
            runs = [client.read_flow_run(UUID(job_id)) for job_id in job_ids]
            if all(r.state is not None and r.state.is_final() for r in runs):
                return {job_id: client.read_flow_run_states(UUID(job_id)) for job_id in job_ids}
            assert time.monotonic() < deadline, [r.state for r in runs]
            time.sleep(0.5)


def test_a_killed_supervisor_leaves_nothing_and_the_next_stack_starts_and_stops_twice_signalled(
    tmp_path: Path,
) -> None:
    ports = (free_port(), free_port())
    first = _up(tmp_path, tmp_path / "first.txt", ports, "--demo")
    try:
        _wait_for(tmp_path / "first.txt", "enqueued backup", first, timeout=300)
        tree = process_tree(first.pid)
        assert len(tree) >= 6, tree  # server, three workers (+ fork servers), shim, sshd
        first.kill()
        first.wait(10)
        first_text = (tmp_path / "first.txt").read_text()
        left = left_alive(tree, within=10)
        assert not left, f"still running 10 s after the supervisor's SIGKILL: {left}"
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)

    killed_jobs = re.findall(r"enqueued \S+: \S+/runs/flow-run/([0-9a-f-]{36})", first_text)
    assert len(killed_jobs) == 2, first_text[-3000:]  # the demo's quick scan and backup
    # The demo again: its server (a new sshd on a new port, the inventory rewritten) is where
    # the killed jobs run again, beside two new ones.
    second = _up(tmp_path, tmp_path / "second.txt", ports, "--demo")
    try:
        _wait_for(tmp_path / "second.txt", "demo jobs done", second, timeout=300)
        histories = _final_histories(tmp_path / "var", ports[0], killed_jobs, timeout=120)
        for job_id, states in histories.items():
            ends = [s for s in states if s.type in ENDS]
            assert [s.type for s in ends][-1] is StateType.COMPLETED, (job_id, states)
            # Each run of it ended once: the killed one Crashed (by the restart), the re-run
            # Completed. Two ends have a new schedule between them (no run ended twice), two
            # starts an end (no second run beside the first).
            steps = [
                "end" if s.type in ENDS else "start" if s.type is StateType.RUNNING else "queued"
                for s in sorted(states, key=lambda s: s.timestamp)
                if s.type in ENDS or s.type in (StateType.RUNNING, StateType.SCHEDULED)
            ]
            assert ("end", "end") not in itertools.pairwise(steps), (job_id, states)
            assert ("start", "start") not in itertools.pairwise(steps), (job_id, states)
        tree = process_tree(second.pid)
        assert tree
        os.killpg(second.pid, signal.SIGTERM)
        time.sleep(0.5)
        os.killpg(second.pid, signal.SIGINT)  # during the stop: it hurries, never skips
        assert second.wait(60) == 0, (tmp_path / "second.txt").read_text()[-3000:]
        text = (tmp_path / "second.txt").read_text()
        assert "stopped in" in text, text[-3000:]
        assert not left_alive(tree, within=5)
    finally:
        if second.poll() is None:
            os.killpg(second.pid, signal.SIGKILL)
