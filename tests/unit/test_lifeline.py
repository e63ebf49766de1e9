"""Each process of a fork-server worker dies with its owner (deployments/worker/lifeline.py), and
the worker tells a lost fork server from a run's exit (deployments/worker/forkserver.py).

Real processes, no network: the parent-death signal is the kernel's, so it is tested on one.
Forks happen in child interpreters, never in pytest's own (it may have threads).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from types import SimpleNamespace
from typing import Any
from uuid import uuid4

import pytest
from prefect.workers.process import ProcessWorker

from deployments.worker import lifeline
from deployments.worker.forkserver import ForkServerWorker, RunTermination, _RunPopen
from tasks.lifeline import ORPHANED

ZOMBIE = "123 (we) ird) Z 1 " + " ".join(["0"] * 40)


def _python(code: str, **kwargs: Any) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, **kwargs
    )


def _gone_within(pid: int, started: int | None, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while lifeline.is_alive(pid, started):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def test_the_start_time_is_read_after_the_last_parenthesis() -> None:
    line = "123 (a (b) c) S 1 " + " ".join(str(n) for n in range(5, 45))
    assert lifeline.parse_start_time(line) == 22  # field 22, however odd the name
    assert lifeline.parse_start_time(ZOMBIE) is None


def test_a_process_is_named_by_its_pid_and_start_time() -> None:
    started = lifeline.start_time(os.getpid())
    assert started is not None
    assert lifeline.is_alive(os.getpid(), started)
    assert not lifeline.is_alive(os.getpid(), started + 1)  # a reused pid is another process
    assert not lifeline.is_alive(os.getpid(), None)


def test_a_child_dies_when_its_parent_is_killed() -> None:
    """kill -9 a parent; its child, which asked to die with it, is gone at once."""
    middle = _python(
        "import os, sys, time\n"
        "import tasks.lifeline\n"
        "parent = os.getpid()\n"
        "child = os.fork()\n"
        "if child == 0:\n"
        "    tasks.lifeline.die_with_parent(parent)\n"
        "    time.sleep(60)\n"
        "    os._exit(0)\n"
        "print(child, flush=True)\n"
        "time.sleep(60)\n"
    )
    assert middle.stdout is not None
    child = int(middle.stdout.readline())
    started = lifeline.start_time(child)
    time.sleep(0.3)  # The child has asked by now.
    assert lifeline.is_alive(child, started)
    middle.kill()
    middle.wait()
    assert _gone_within(child, started, 5), f"child {child} outlived its parent"


def test_a_child_whose_parent_died_before_it_asked_ends_itself() -> None:
    """The race the check closes: a parent that is not ours (any more) means exit now."""
    child = _python(
        "import os\nimport tasks.lifeline\n"
        "tasks.lifeline.die_with_parent(os.getppid() + 1)\nprint('lived on')\n"
    )
    out, _ = child.communicate(timeout=30)
    assert (child.returncode, out) == (ORPHANED, "")


def test_the_fork_server_and_each_run_get_their_own_group_and_death_signal() -> None:
    """As the fork server starts (become_forkserver), then as it forks a run, and the run a
    process of its own, which is left alone."""
    code = (
        "import json, os\n"
        "import tasks.lifeline\n"
        "from deployments.worker import lifeline\n"
        "def me():\n"
        "    pid = os.getpid()\n"
        "    return {'pid': pid, 'pgid': os.getpgid(0), 'sid': os.getsid(0),"
        " 'pdeathsig': tasks.lifeline.death_signal()}\n"
        "lifeline.become_forkserver()\n"
        "r, w = os.pipe()\n"
        "run = os.fork()\n"
        "if run == 0:\n"
        "    inner = os.fork()\n"
        "    if inner == 0:\n"
        "        os.write(w, (json.dumps(me()) + '\\n').encode()); os._exit(0)\n"
        "    os.waitpid(inner, 0)\n"
        "    os.write(w, (json.dumps(me()) + '\\n').encode()); os._exit(0)\n"
        "os.waitpid(run, 0)\n"
        "os.close(w)\n"
        "print(json.dumps([me(), *map(json.loads, os.fdopen(r).read().splitlines())]))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, lifeline.OWNER_VARIABLE: str(os.getpid())},
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    server, inner, run = json.loads(result.stdout)
    assert server["pgid"] == server["pid"] != os.getpgid(0), "the fork server shares a group"
    assert server["sid"] == os.getsid(0), "the fork server left the worker's session"
    assert server["pdeathsig"] == signal.SIGKILL
    assert run["sid"] == run["pgid"] == run["pid"], "a run shares its fork server's group"
    assert run["pdeathsig"] == signal.SIGKILL
    assert inner["sid"] == run["pid"], "a run's own child was moved out of the run's session"
    assert inner["pdeathsig"] == 0


def test_a_fork_server_whose_worker_is_gone_ends_itself() -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            "from deployments.worker import lifeline\n"
            "lifeline.become_forkserver()\nprint('served')\n",
        ],
        env={**os.environ, lifeline.OWNER_VARIABLE: str(os.getpid() + 1)},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert (result.returncode, result.stdout) == (ORPHANED, "")


def test_a_hard_kill_takes_the_runs_children_along() -> None:
    """The run's ssh and tar are in its session: SIGKILL to the run reaches them too."""
    run = _python(
        "import subprocess, time\n"
        "child = subprocess.Popen(['sleep', '60'])\n"
        "print(child.pid, flush=True)\n"
        "time.sleep(60)\n",
        start_new_session=True,
    )
    assert run.stdout is not None
    child = int(run.stdout.readline())
    started = lifeline.start_time(child)
    RunTermination().hard_kill(run.pid)
    run.wait(timeout=10)
    assert _gone_within(child, started, 5), "the run's child outlived it"
    assert not RunTermination().is_alive(run.pid)


def _popen_on(read_end: int) -> _RunPopen:
    popen = _RunPopen.__new__(_RunPopen)
    popen.lost = False
    popen._reading = __import__("threading").Lock()
    popen.returncode = None
    popen.sentinel = read_end
    return popen


@pytest.mark.parametrize("status", [0, 255, -9])
def test_the_status_the_fork_server_sends_is_the_runs(status: int) -> None:
    from multiprocessing.forkserver import write_signed

    read_end, write_end = os.pipe()
    popen = _popen_on(read_end)
    assert popen.poll() is None  # nothing sent yet: still running
    write_signed(write_end, status)
    os.close(write_end)
    assert (popen.poll(), popen.lost) == (status, False)
    os.close(read_end)


def test_a_pipe_closed_without_a_status_is_a_lost_fork_server_not_an_exit() -> None:
    """The stock poll says 255 here, and the worker reported a live run as crashed."""
    read_end, write_end = os.pipe()
    popen = _popen_on(read_end)
    os.close(write_end)
    assert (popen.poll(0), popen.lost) == (None, True)
    assert popen.poll() is None  # and stays unknown until the starter settles it
    os.close(read_end)


def test_a_crash_the_executor_reported_is_not_reported_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    reports: list[str] = []

    async def report(self: Any, flow_run: Any, message: str, client: Any = None) -> None:
        reports.append(message)

    monkeypatch.setattr(ProcessWorker, "_propose_crashed_state", report)
    worker = ForkServerWorker.__new__(ForkServerWorker)
    reported, other = SimpleNamespace(id=uuid4()), SimpleNamespace(id=uuid4())
    worker._crash_reported = {reported.id}

    async def main() -> None:
        await worker._propose_crashed_state(reported, "again")  # type: ignore[arg-type]
        await worker._propose_crashed_state(other, "first")  # type: ignore[arg-type]
        await worker._propose_crashed_state(reported, "later")  # type: ignore[arg-type]

    asyncio.run(main())
    assert reports == ["first", "later"]
