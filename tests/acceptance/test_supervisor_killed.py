"""kill -9 of `make up`'s supervisor while the demo's jobs run, then `make up` again, stopped by
two signals to its process group.

Breaks: the supervisor dies without a word (SIGKILL), with the Prefect server, three workers
with their fork servers and the jobs' runs, the shim and the demo's sshd below it; later, a
Ctrl-C to the whole group is followed by a second one during the stop. Must survive: within
10 s no process the first stack started is left (each dies with its parent:
deployments/worker/lifeline.py); the next `make up` on the same data directory and ports
starts; the double signal stops it cleanly (exit 0), leaving no process of its own.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from deployments.system.local_target import descendants, free_port
from deployments.worker.lifeline import is_alive, start_time

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


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


def _tree(pid: int) -> dict[int, int | None]:
    return {child: start_time(child) for child in descendants(pid)}


def _left(tree: dict[int, int | None], within: float) -> list[int]:
    deadline = time.monotonic() + within
    while True:
        left = [pid for pid, started in tree.items() if is_alive(pid, started)]
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.2)


def test_a_killed_supervisor_leaves_nothing_and_the_next_stack_starts_and_stops_twice_signalled(
    tmp_path: Path,
) -> None:
    ports = (free_port(), free_port())
    first = _up(tmp_path, tmp_path / "first.txt", ports, "--demo")
    try:
        _wait_for(tmp_path / "first.txt", "enqueued backup", first, timeout=300)
        tree = _tree(first.pid)
        assert len(tree) >= 6, tree  # server, three workers (+ fork servers), shim, sshd
        first.kill()
        first.wait(10)
        left = _left(tree, within=10)
        assert not left, f"still running 10 s after the supervisor's SIGKILL: {left}"
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)

    second = _up(tmp_path, tmp_path / "second.txt", ports)
    try:
        _wait_for(tmp_path / "second.txt", "Ctrl-C stops everything", second, timeout=300)
        tree = _tree(second.pid)
        assert tree
        os.killpg(second.pid, signal.SIGTERM)
        time.sleep(0.5)
        os.killpg(second.pid, signal.SIGINT)  # during the stop: it hurries, never skips
        assert second.wait(60) == 0, (tmp_path / "second.txt").read_text()[-3000:]
        text = (tmp_path / "second.txt").read_text()
        assert "stopped in" in text, text[-3000:]
        assert not _left(tree, within=5)
    finally:
        if second.poll() is None:
            os.killpg(second.pid, signal.SIGKILL)
