"""One stack per data directory: the supervisor of `make up` holds an exclusive `flock` on
`<data_dir>/stack.lock` for its whole life, and names itself in `<data_dir>/stack.pid`; its
children are listed in `<data_dir>/stack.children`, so that a stack whose supervisor was killed
with SIGKILL leaves nothing the next one does not end (`end_leftovers`).

The lock, not the pid file, decides: the kernel drops it when its holder dies however it dies
(SIGKILL included), so a stale pid file never blocks a start. The pid file says who holds the
lock, for the refusal's message, with the process's start time (`/proc/<pid>/stat`, field 22)
so that a later reader can tell that process from another one that got its pid since.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from deployments.system import credentials
from deployments.worker.lifeline import is_alive, start_time
from tasks.atomic import write_atomic

#: The file `flock`ed by the running stack's supervisor, under the data directory.
LOCK_FILE = "stack.lock"
#: The supervisor's pid and start time, JSON, under the data directory.
PID_FILE = "stack.pid"
#: The supervisor's children (each the leader of its own session), pids and start times, JSON.
CHILDREN_FILE = "stack.children"
#: Seconds `end_leftovers` waits for what it killed to be gone.
LEFTOVER_WAIT = 10.0


@dataclass(frozen=True)
class Holder:
    """The process that holds a data directory's lock."""

    pid: int
    #: Clock ticks after boot when it started (/proc/<pid>/stat, field 22); None if unknown.
    start_time: int | None


class StackRunning(RuntimeError):
    """Another stack runs on this data directory; the message names its pid."""

    def __init__(self, data_dir: Path, holder: Holder | None) -> None:
        who = f"pid {holder.pid}" if holder is not None else "pid unknown"
        stop = f"`kill -TERM {holder.pid}`" if holder is not None else "its Ctrl-C"
        super().__init__(
            f"a stack is already running on {data_dir} ({who}); stop it ({stop}) or give this"
            " one another --data-dir"
        )
        self.holder = holder


def read_holder(data_dir: Path) -> Holder | None:
    """What the pid file says, or None if it is missing or unreadable."""
    try:
        found = json.loads((data_dir / PID_FILE).read_text())
        return Holder(pid=int(found["pid"]), start_time=found.get("start_time"))
    except (OSError, ValueError, KeyError, TypeError):
        return None


class DataDirLock:
    """`with DataDirLock(data_dir):` runs the body as the data directory's only stack, or
    raises `StackRunning` naming the one that is."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self._fd: int | None = None

    def acquire(self) -> DataDirLock:
        credentials.private_dir(self.data_dir)
        # Not inherited (PEP 446): the lock is the supervisor's alone, and ends with it.
        fd = os.open(self.data_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise StackRunning(self.data_dir, read_holder(self.data_dir)) from None
        self._fd = fd
        pid = os.getpid()
        holder = {"pid": pid, "start_time": start_time(pid)}
        write_atomic(self.data_dir / PID_FILE, json.dumps(holder).encode() + b"\n")
        return self

    def release(self) -> None:
        """Remove the pid file, then let go of the lock; safe to repeat."""
        if self._fd is None:
            return
        held = read_holder(self.data_dir)
        if held is not None and held.pid == os.getpid():
            with contextlib.suppress(FileNotFoundError):
                (self.data_dir / PID_FILE).unlink()
        os.close(self._fd)  # closing the only descriptor drops the flock
        self._fd = None

    def __enter__(self) -> DataDirLock:
        return self.acquire()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()


def record_children(data_dir: Path, pids: Iterable[int]) -> None:
    """Name the stack's running children, replacing the last list: each with its start time,
    so that a later reader never takes another process that got its pid since for one of
    them (the reason pids are never matched by name either)."""
    children = [
        {"pid": pid, "start_time": started}
        for pid in pids
        if (started := start_time(pid)) is not None
    ]
    write_atomic(data_dir / CHILDREN_FILE, json.dumps(children).encode() + b"\n")


def end_leftovers(data_dir: Path) -> list[int]:
    """SIGKILL the process groups of the children that the last stack on `data_dir` left
    running (its supervisor was killed too hard to stop them), and return their pids.

    Call it only while holding the data directory's lock: then no stack owns them.
    """
    try:
        listed = json.loads((data_dir / CHILDREN_FILE).read_text())
        children = [Holder(pid=int(c["pid"]), start_time=c["start_time"]) for c in listed]
    except (OSError, ValueError, KeyError, TypeError):
        children = []
    ended = [c.pid for c in children if is_alive(c.pid, c.start_time)]
    for pid in ended:
        # Each child leads its own session and process group: its descendants go with it.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)
    deadline = time.monotonic() + LEFTOVER_WAIT
    while time.monotonic() < deadline and any(
        is_alive(c.pid, c.start_time) for c in children if c.pid in ended
    ):
        time.sleep(0.05)
    with contextlib.suppress(FileNotFoundError):
        (data_dir / CHILDREN_FILE).unlink()
    return ended
