"""A stack whose supervisor was SIGKILLed leaves its children listed in the data directory; the
next one ends exactly those, told apart from a later process with the same pid by their start
time (deployments/system/lock.py). Real processes."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from deployments.system.lock import (
    CHILDREN_FILE,
    end_leftovers,
    record_children,
)
from deployments.worker.lifeline import start_time


@pytest.fixture
def sessions() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Children in sessions of their own, each with a grandchild, as the stack starts them."""
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for child in started:
        child.kill()
        child.wait()


def _session(started: list[subprocess.Popen[bytes]]) -> subprocess.Popen[bytes]:
    code = "import subprocess, time; subprocess.Popen(['sleep', '120']); time.sleep(120)"
    child = subprocess.Popen([sys.executable, "-c", code], start_new_session=True)
    started.append(child)
    return child


def _gone(pid: int) -> bool:
    state = Path(f"/proc/{pid}/stat")
    return not state.exists() or state.read_text().rsplit(")", 1)[1].split()[0] == "Z"


def test_the_listed_children_and_their_groups_are_ended(
    tmp_path: Path, sessions: list[subprocess.Popen[bytes]]
) -> None:
    child = _session(sessions)
    time.sleep(0.5)  # Its grandchild is started.
    group = [
        int(p.name)
        for p in Path("/proc").iterdir()
        if p.name.isdigit()
        and (p / "stat").exists()
        and int((p / "stat").read_text().rsplit(")", 1)[1].split()[2]) == child.pid
    ]
    assert len(group) == 2, group  # The child and its sleep.
    record_children(tmp_path, [child.pid])
    assert end_leftovers(tmp_path) == [child.pid]
    child.wait(5)
    deadline = time.monotonic() + 5
    while not all(_gone(pid) for pid in group) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert all(_gone(pid) for pid in group)
    assert not (tmp_path / CHILDREN_FILE).exists()


def test_a_process_that_got_a_listed_pid_later_is_left_alone(
    tmp_path: Path, sessions: list[subprocess.Popen[bytes]]
) -> None:
    bystander = _session(sessions)
    started = start_time(bystander.pid)
    assert started is not None
    # The list of a stack long gone, whose child had this pid and started earlier.
    (tmp_path / CHILDREN_FILE).write_text(
        json.dumps([{"pid": bystander.pid, "start_time": started - 1}])
    )
    assert end_leftovers(tmp_path) == []
    assert bystander.poll() is None


def test_no_list_ends_nothing(tmp_path: Path) -> None:
    assert end_leftovers(tmp_path) == []
