"""A stop waits out its grace for what ignores SIGTERM, and `hurry()` cuts that wait short
without skipping the stop's steps (deployments/system/stack.py). Real processes, no Prefect."""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

from deployments.system.stack import Child, Stack

#: A "worker" that ignores SIGTERM and says so once its handler is set.
STUBBORN = (
    "import signal, sys, time\n"
    "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
    "print('ready', flush=True)\n"
    "time.sleep(120)\n"
)


def _started(tmp_path: Path, name: str) -> Child:
    child = Child(name, [sys.executable, "-c", STUBBORN], tmp_path / "logs" / f"{name}.log")
    child.start({}, tmp_path)
    deadline = time.monotonic() + 30
    while "ready" not in child.log_tail() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "ready" in child.log_tail()
    return child


def _stack(tmp_path: Path) -> Stack:
    return Stack(tmp_path / "var", api_port=None, jwt_secret="x" * 32, auth_string="u:p" * 8)


def test_the_grace_holds_until_hurry_then_the_stop_ends_everything(tmp_path: Path) -> None:
    stack = _stack(tmp_path)
    stack.workers = {"scan": _started(tmp_path, "scan"), "backup": _started(tmp_path, "backup")}
    stopping = threading.Thread(target=stack.stop, kwargs={"grace": 120})
    stopping.start()
    stopping.join(2)
    # Within its grace the stop still waits for the stubborn workers ...
    assert stopping.is_alive()
    assert all(w.alive() for w in stack.workers.values())
    stack.hurry()
    # ... and once hurried it kills them and goes on to its end, the server wave included.
    stopping.join(30)
    assert not stopping.is_alive()
    assert not any(w.alive() for w in stack.workers.values())


def test_a_hurry_before_the_stop_makes_that_stop_quick(tmp_path: Path) -> None:
    # The second Ctrl-C may come before `make up` has begun its stop.
    stack = _stack(tmp_path)
    stack.workers = {"scan": _started(tmp_path, "scan")}
    stack.hurry()
    stopping = threading.Thread(target=stack.stop, kwargs={"grace": 120})
    stopping.start()
    stopping.join(30)
    assert not stopping.is_alive()
    assert not stack.workers["scan"].alive()


def test_stopping_twice_is_stopping_once(tmp_path: Path) -> None:
    stack = _stack(tmp_path)
    stack.workers = {"scan": _started(tmp_path, "scan")}
    stack.stop(grace=0)
    assert not stack.workers["scan"].alive()
    stack.stop(grace=0)  # Nothing left to signal: no error, nothing waits.
