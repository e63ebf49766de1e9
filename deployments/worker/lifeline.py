"""Who owns each process of a fork-server worker, and how each dies with its owner.

The worker owns its fork server, the fork server the runs it forks. Each asks the kernel to
SIGKILL it when its parent ends (`prctl(PR_SET_PDEATHSIG)`), which holds even when the parent
is SIGKILLed, and each lives in a process group of its own, so that a signal to its owner's
group (a terminal's Ctrl-C, `kill -TERM -<pgid>`) does not reach it: the owner orders the stop.
docs/DESIGN.md, "Who owns each process", says why this and not a subreaper.
"""

from __future__ import annotations

import contextlib
import os
import signal
from pathlib import Path

from tasks.lifeline import die_with_parent

#: The worker's pid, in the fork server's environment: the parent it must die with. Not a
#: setting (the worker sets it for its own child), hence the double underscore.
OWNER_VARIABLE = "MM__FORKSERVER_OWNER"


class _Role:
    #: This process's pid if it is a fork server, else None.
    forkserver: int | None = None
    #: Whether this process is a run forked by the fork server (or a process the run forked).
    in_run = False


def become_forkserver() -> None:
    """Tie this process, the worker's fork server, to its worker, and each run it forks to it.

    Called first thing by the fork server (deployments/worker/forkserver_boot.py). Its own
    group: a signal to the worker's group no longer kills it under the runs it serves.
    """
    os.setpgid(0, 0)
    owner = os.environ.get(OWNER_VARIABLE)
    if owner is not None:
        die_with_parent(int(owner))
    _Role.forkserver = os.getpid()
    os.register_at_fork(after_in_child=_adopt_run)


def _adopt_run() -> None:
    """Right after each fork of the fork server, in the child: the run's own session, so that
    a signal to the fork server's group or the terminal misses it, and death with the fork
    server. Processes a run forks itself inherit this hook and are left alone."""
    if _Role.forkserver is None or _Role.in_run:
        return
    _Role.in_run = True
    os.setsid()
    die_with_parent(_Role.forkserver)


def start_time(pid: int) -> int | None:
    """When `pid` started (clock ticks after boot, /proc/<pid>/stat field 22); None when it is
    gone or a zombie. With the pid, it names one process: a pid is reused, this pair is not."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return parse_start_time(stat)


def parse_start_time(stat: str) -> int | None:
    """The start time in a /proc/<pid>/stat line, None for a zombie or a dead process.

    The command name (field 2) is in parentheses and may hold spaces and parentheses itself,
    so the fields are counted after its last ")".
    """
    fields = stat.rsplit(")", 1)[1].split()
    if fields[0] in ("Z", "X"):  # fields[0] is field 3, the state
        return None
    return int(fields[19])


def is_alive(pid: int, started: int | None) -> bool:
    """Whether the process that started at `started` as `pid` still runs."""
    return started is not None and start_time(pid) == started


def kill_session(pid: int) -> None:
    """SIGKILL the run `pid` and what it started (its ssh and tar, in its session's group).

    Safe after the run itself ended: the kernel hands out no pid that is still some group's
    id, so while the group exists its members are the run's.
    """
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)  # Not in its own group yet (microseconds after fork).
