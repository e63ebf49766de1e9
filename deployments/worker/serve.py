"""One process serving several work pools: a fork-server worker per pool, one fork server.

A worker process per pool, each with a fork server of its own (two interpreters with Prefect
imported, ~176 MiB PSS together), cost that three times over, for pools idle most of the time.
Here each pool keeps its own worker object, so Prefect and the Prefect UI see the same three
workers as before: its name, its `--limit`, its work queues' priorities, its registration and
heartbeats, its event stream. What they share is the interpreter, the fork server and the
thread that asks it for runs (deployments/worker/forkserver.py): a run forked for any pool
costs what a run of one pool did.

The workers live and die together. A worker that fails ends the process, and the runs of all
its pools die with their fork server's owner, as one worker's runs did before
(deployments/worker/lifeline.py); the supervisor starts the process again and the re-run
automation hands the runs back (deployments/control/automations.py). Signals are those of
`prefect worker start`: the first SIGTERM or Ctrl-C stops all workers gracefully, a second one
kills the process; `DRAIN_SIGNAL` drains them all.

    python -m deployments.worker.serve --pool backup --limit 2 --name backup@host \\
        --pool scan --limit 5 --name scan@host
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass

import anyio
from prefect.logging import get_logger
from prefect.settings import PREFECT_WORKER_HEARTBEAT_SECONDS, PREFECT_WORKER_PREFETCH_SECONDS
from prefect.utilities.processutils import setup_signal_handlers_worker

from deployments.worker.forkserver import ForkServerWorker


@dataclass(frozen=True)
class PoolWorker:
    """One pool served by the process: its worker's name and limit."""

    pool: str
    limit: int
    name: str


def argv_of(workers: Sequence[PoolWorker]) -> list[str]:
    """The arguments that make `parse_args` give `workers` back."""
    return [
        arg
        for worker in workers
        for arg in ("--pool", worker.pool, "--limit", str(worker.limit), "--name", worker.name)
    ]


def parse_args(argv: Sequence[str] | None = None) -> list[PoolWorker]:
    parser = argparse.ArgumentParser(
        prog="python -m deployments.worker.serve",
        description="Serve work pools from one process: a fork-server worker for each pool.",
    )
    parser.add_argument("--pool", action="append", required=True, help="a work pool to serve")
    parser.add_argument(
        "--limit", action="append", type=int, required=True, help="that pool's worker's limit"
    )
    parser.add_argument("--name", action="append", required=True, help="that pool's worker's name")
    args = parser.parse_args(argv)
    if not len(args.pool) == len(args.limit) == len(args.name):
        parser.error("give each --pool its own --limit and --name, in that order")
    if len(set(args.pool)) != len(args.pool):
        parser.error("each --pool once: a pool's limit holds for one worker of it per process")
    if any(limit < 1 for limit in args.limit):
        parser.error("each --limit must be at least 1")
    given = zip(args.pool, args.limit, args.name, strict=True)
    return [PoolWorker(pool, limit, name) for pool, limit, name in given]


async def serve(workers: Sequence[PoolWorker]) -> None:
    """Run a fork-server worker for each pool until they stop (or one of them fails)."""
    say = _logger().info
    setup_signal_handlers_worker(os.getpid(), "the fork-server workers", say)
    # Built here, inside the event loop, as `prefect worker start` builds its one worker.
    started = [
        ForkServerWorker(
            name=worker.name,
            work_pool_name=worker.pool,
            limit=worker.limit,
            prefetch_seconds=PREFECT_WORKER_PREFETCH_SECONDS.value(),
            heartbeat_interval_seconds=int(PREFECT_WORKER_HEARTBEAT_SECONDS.value()),
            # Pools are the bootstrap's; a worker must not create an empty-template one.
            create_pool_if_not_found=False,
        )
        for worker in workers
    ]
    async with anyio.create_task_group() as group:
        for worker in started:
            group.start_soon(functools.partial(worker.start, printer=say))


def main(argv: Sequence[str] | None = None) -> None:
    workers = parse_args(argv)
    # A stop's SIGTERM ends here, after every worker's graceful exit, as Prefect's CLI ends.
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(workers))
    _logger().info("Workers %s stopped!", ", ".join(repr(w.name) for w in workers))


def _logger() -> logging.Logger:
    # Fetched when used: a logger made at import is disabled when Prefect configures logging.
    return get_logger("worker.serve")


if __name__ == "__main__":
    main()
