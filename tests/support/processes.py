"""Process trees of a stack under test: recorded before a fault, checked for leftovers after."""

from __future__ import annotations

import time
from pathlib import Path

from deployments.system.local_target import descendants
from deployments.worker.lifeline import is_alive, start_time

#: pid -> start time, so that a pid the kernel gave to a new process is not taken for a leftover.
Tree = dict[int, int | None]


def process_tree(pid: int) -> Tree:
    """Every descendant of `pid` as it is now, with its start time."""
    return {child: start_time(child) for child in descendants(pid)}


def left_alive(tree: Tree, within: float) -> list[int]:
    """The processes of `tree` still alive after waiting up to `within` s for them to go."""
    deadline = time.monotonic() + within
    while True:
        left = [pid for pid, started in tree.items() if is_alive(pid, started)]
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.2)


def fork_servers(worker: int) -> list[int]:
    """The fork servers the worker process `worker` started itself: its own children running
    `multiprocessing.forkserver` (its runs, forked from one, share that command line but are
    the fork server's children)."""
    found = []
    for pid in descendants(worker):
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:  # It ended meanwhile.
            continue
        if (
            int(stat.rsplit(")", 1)[1].split()[1]) == worker
            and b"multiprocessing.forkserver" in cmdline
        ):
            found.append(pid)
    return found
