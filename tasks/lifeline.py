"""Children that die with the process that started them, SIGKILL included.

The kernel SIGKILLs such a child when its parent ends (`prctl(PR_SET_PDEATHSIG)`), even when
the parent is SIGKILLed: a run's ssh, age and zstd die with the run, the stack's children with
the stack (deployments/worker/lifeline.py builds the fork server's ownership on the same call).
Here, below both, so that tasks/ may use it too.
"""

from __future__ import annotations

import ctypes
import functools
import os
import signal
import threading
from collections.abc import Callable

#: Exit status of a child that found its parent already gone when it asked to die with it.
ORPHANED = 70

_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
#: Loaded here, once: `die_with_parent` also runs between fork and exec (the stack's
#: `preexec_fn`), where loading a library could deadlock on a lock another thread held.
_LIBC = ctypes.CDLL(None, use_errno=True)


def die_with_parent(parent: int) -> None:
    """Have the kernel SIGKILL this process when `parent` ends; exit now if it ended already.

    The death signal is asked for after the fork, so a parent that died in between would go
    unnoticed: then this process is someone else's child already, and ends itself.
    """
    if _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        error = ctypes.get_errno()
        raise OSError(error, f"prctl(PR_SET_PDEATHSIG): {os.strerror(error)}")
    if os.getppid() != parent:
        os._exit(ORPHANED)


def tied_to_this_process() -> Callable[[], None] | None:
    """A `preexec_fn` for `subprocess.Popen` by which the child dies with this process,
    SIGKILL included; None off the main thread.

    The kernel ties the child to the thread that forks it, not to the process: from another
    thread (a test starting a stack in the background), that thread's end would kill it.
    """
    if threading.current_thread() is not threading.main_thread():
        return None
    return functools.partial(die_with_parent, os.getpid())


def death_signal() -> int:
    """This process's parent-death signal, 0 for none (for tests and diagnostics)."""
    value = ctypes.c_int(0)
    _LIBC.prctl(2, ctypes.byref(value), 0, 0, 0)  # PR_GET_PDEATHSIG
    return value.value
