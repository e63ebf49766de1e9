"""Issue 16: an idle stack stops in under 3 s, against the Prefect server alone.

    uv run python -m bench.stop [--quick] [--rounds N]

Each round measures both sides, in turns (the side that goes first alternates), each on a
fresh data directory and free ports:

- ours: the whole embedded stack as `make up` builds it (`deployments.system.stack.Stack`:
  Prefect server, a fork-server worker per pool, the API shim; an empty inventory, no UI),
  started (every worker registered, the shim ready), left idle for `SETTLE` s, then
  `stack.stop()`, timed alone. The stop's own steps come from `stack.timings` (keys `stop
  runs`, `stop workers`, `stop`, each counted from the stop's start): the drain and the
  shim, the workers, the server side.
- reference: the same Prefect server alone (`Stack.start_server`: our launcher of `prefect
  server start`, the same environment), idle for `SETTLE` s, then SIGTERM to its process
  group and a wait for it to exit, timed alone.

The row counts the processes of each stopped tree still alive after its stop. Medians over
the rounds. Not a test: a timing, as a ratio against a reference measured in the same run.
"""

from __future__ import annotations

import argparse
import itertools
import os
import signal
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from bench.report import BenchConfig, Row, median, table
from deployments.system.local_target import descendants, free_port
from deployments.system.stack import Stack
from deployments.system.up import EXAMPLE_INVENTORY

#: The goal of issue 16, in seconds.
GOAL = 3.0
#: Seconds each side idles between its start and its stop (start-up work, first polls).
SETTLE = 5.0
#: Seconds the reference's server gets after SIGTERM before it is killed (as `Stack.stop`).
SERVER_TIMEOUT = 30.0
#: The stop's steps in `Stack.timings`, each counted from the stop's start, and their names.
STEPS = {"stop runs": "drain + shim", "stop workers": "workers", "stop": "server side"}


@dataclass(frozen=True)
class Stopped:
    """One timed stop: seconds in all, its steps (seconds each), processes that outlived it."""

    seconds: float
    steps: dict[str, float]
    survivors: int


def _processes(pids: Iterable[int]) -> set[tuple[int, str]]:
    """Each process of the trees under `pids`, with its start time (a pid alone may be reused)."""
    found = set()
    for pid in pids:
        for p in (pid, *descendants(pid)):
            started = _start_time(p)
            if started is not None:
                found.add((p, started))
    return found


def _start_time(pid: int) -> str | None:
    """Field 22 of /proc/<pid>/stat; None if the process is gone or a zombie."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return None if fields[0] == "Z" else fields[19]


def _survivors(before: set[tuple[int, str]]) -> int:
    return sum(_start_time(pid) == started for pid, started in before)


def _new_stack(work: Path, *, shim: bool) -> Stack:
    inventory = work / "inventory.yaml"
    inventory.write_text(EXAMPLE_INVENTORY)
    return Stack(
        work / "var",
        port=free_port(),
        api_port=free_port() if shim else None,
        ui=False,
        inventory=inventory,
    )


def ours() -> Stopped:
    """The whole stack, started and idle, then `stop()`."""
    with tempfile.TemporaryDirectory(prefix="mm-bench-stop-") as tmp:
        stack = _new_stack(Path(tmp), shim=True)
        try:
            stack.start()
            assert stack.shim is not None, "the API shim did not start"
            time.sleep(SETTLE)
            children = [*stack.servers, *stack.worker_processes(), stack.shim]
            before = _processes(c.pid for c in children if c.pid is not None)
            began = time.monotonic()
            stack.stop()
            seconds = time.monotonic() - began
            # Read before the `finally`: a second stop (which finds nothing left) writes them again.
            marks = [stack.timings[key] for key in STEPS]
        finally:
            stack.stop()
        spans = itertools.pairwise([0.0, *marks])
        steps = {name: b - a for name, (a, b) in zip(STEPS.values(), spans, strict=True)}
        return Stopped(seconds, steps, _survivors(before))


def reference() -> Stopped:
    """The Prefect server alone, idle, then SIGTERM to its group and a wait for its exit."""
    with tempfile.TemporaryDirectory(prefix="mm-bench-stop-ref-") as tmp:
        stack = _new_stack(Path(tmp), shim=False)
        try:
            stack.start_server()
            server = stack.server
            assert server is not None and server.popen is not None
            time.sleep(SETTLE)
            before = _processes([server.popen.pid])
            began = time.monotonic()
            os.killpg(server.popen.pid, signal.SIGTERM)
            server.popen.wait(SERVER_TIMEOUT)
            seconds = time.monotonic() - began
        finally:
            # Kills what outlived the wait (or a failed start), and reaps it.
            stack.stop(grace=0.0)
        return Stopped(seconds, {}, _survivors(before))


def run(config: BenchConfig) -> list[Row]:
    rounds = config.rounds or (1 if config.quick else 3)
    mine: list[Stopped] = []
    theirs: list[Stopped] = []
    for index in range(rounds):
        sides = [(ours, mine), (reference, theirs)]
        for measure, into in sides if index % 2 == 0 else sides[::-1]:
            into.append(measure())
            print(f"  round {index + 1} {measure.__name__}: {into[-1].seconds:.2f} s", flush=True)
    ours_s = median([s.seconds for s in mine])
    ref_s = median([s.seconds for s in theirs])
    steps = ", ".join(
        f"{name} {median([s.steps[name] for s in mine]):.2f}" for name in STEPS.values()
    )
    left = sum(s.survivors for s in mine)
    left_ref = sum(s.survivors for s in theirs)
    each = ", ".join(f"{s.seconds:.2f}" for s in mine)
    each_ref = ", ".join(f"{s.seconds:.2f}" for s in theirs)
    return [
        Row(
            "idle stop, whole stack (server, 3 workers, shim) vs the Prefect server alone "
            f"({rounds} alternating rounds, {SETTLE:.0f} s idle; medians)",
            f"{ours_s:.2f} s `Stack.stop()` (steps: {steps} s; rounds {each} s; "
            f"{left} processes left)",
            f"{ref_s:.2f} s SIGTERM to the server's group -> exit (rounds {each_ref} s; "
            f"{left_ref} processes left)",
            f"{ours_s / ref_s:.2f}x",
            f"< {GOAL:.0f} s",
            ours_s < GOAL,
        )
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="one round")
    parser.add_argument("--rounds", type=int, default=None, help="alternating rounds")
    args = parser.parse_args()
    print(table(run(BenchConfig(quick=args.quick, rounds=args.rounds))))


if __name__ == "__main__":
    main()
