"""Issue 21's goal 6: the Prefect server CPU of 100 open event streams against one poll a second.

    uv run python -m bench.sse [--quick] [--rounds N]

Starts the embedded stack with an sshd on loopback (`bench.dispatch.scan_stack`) and enqueues
one quick scan an hour ahead, so that the job stays `delayed` (not final) and its event stream
stays open. Then, in alternating rounds (the order rotating each round), the Prefect server's
CPU (utime + stime from /proc/<pid>/stat, `bench.run_cost.cpu_seconds`) over the same window:

- ours: 100 clients each holding `GET /api/jobs/:id/events` open on that job, read as it
  comes (the window starts 2 s after every stream has sent its first event);
- the reference: one client polling `GET /api/jobs/:id` once a second;
- for information: the same window with nothing asked of the shim (the stack's own work).

The goal: the streams cost the server no more CPU than the poll; the ratio is the median over
the rounds of each round's streams / poll, both including the idle work (so the idle figure is
shown, to read how much of each is the requests'). The shim's CPU is reported beside it.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from bench.dispatch import scan_stack
from bench.report import BenchConfig, Row, median, table
from bench.run_cost import cpu_seconds
from deployments.system.stack import FORKSERVER, Stack

STREAMS = 100
#: Seconds from the load being in place (every stream has sent its first event) to the window:
#: the opening's reads are not the goal's.
SETTLE = 2.0
#: Seconds the 100 streams may take to open.
OPENING = 120.0
#: The job's delay: longer than any run of this benchmark, so it never starts.
DELAY_MS = 3_600_000


@dataclass
class Phase:
    """One way of keeping the shim busy, and its CPU in each round (seconds per second)."""

    name: str
    #: Keeps the shim busy until `stop` is set; sets `ready` once the load is in place.
    load: Callable[
        [httpx.AsyncClient, str, asyncio.Event, asyncio.Event], Coroutine[Any, Any, None]
    ]
    server: dict[int, float] = field(default_factory=dict)
    shim: dict[int, float] = field(default_factory=dict)

    def per_second(self, of: dict[int, float]) -> str:
        return f"{median(list(of.values())) * 1000:.1f} ms/s"


async def _nothing(
    http: httpx.AsyncClient, job_id: str, ready: asyncio.Event, stop: asyncio.Event
) -> None:
    ready.set()
    await stop.wait()


async def _poll(
    http: httpx.AsyncClient, job_id: str, ready: asyncio.Event, stop: asyncio.Event
) -> None:
    while not stop.is_set():
        began = time.monotonic()
        (await http.get(f"/api/jobs/{job_id}")).raise_for_status()
        ready.set()
        try:
            await asyncio.wait_for(stop.wait(), max(0.0, 1.0 - (time.monotonic() - began)))
        except TimeoutError:
            pass


async def _streams(
    http: httpx.AsyncClient, job_id: str, ready: asyncio.Event, stop: asyncio.Event
) -> None:
    opened = 0

    async def one() -> None:
        nonlocal opened
        async with http.stream("GET", f"/api/jobs/{job_id}/events") as response:
            response.raise_for_status()
            chunks = response.aiter_raw()
            await anext(chunks)  # the job's first event: this stream is open
            opened += 1
            if opened == STREAMS:
                ready.set()
            async for _ in chunks:
                pass

    readers = [asyncio.create_task(one()) for _ in range(STREAMS)]
    await stop.wait()
    for reader in readers:
        reader.cancel()
    for outcome in await asyncio.gather(*readers, return_exceptions=True):
        # A stream that ended by itself, or failed, did not stay open for the window.
        if not isinstance(outcome, asyncio.CancelledError):
            raise RuntimeError(f"an event stream ended during the window: {outcome!r}")


async def _round(
    stack: Stack, http: httpx.AsyncClient, job_id: str, phase: Phase, n: int, window: float
) -> None:
    assert stack.server is not None and stack.server.pid is not None
    assert stack.shim is not None and stack.shim.pid is not None
    server, shim = stack.server.pid, stack.shim.pid
    ready, stop = asyncio.Event(), asyncio.Event()
    load = asyncio.create_task(phase.load(http, job_id, ready, stop))
    in_place = asyncio.create_task(ready.wait())
    await asyncio.wait({load, in_place}, timeout=OPENING, return_when=asyncio.FIRST_COMPLETED)
    if load.done():
        await load  # a load ends before `stop` only by failing: its error
    if not ready.is_set():
        in_place.cancel()
        raise TimeoutError(f"{phase.name}: not in place after {OPENING:.0f} s")
    await asyncio.sleep(SETTLE)
    before = cpu_seconds(server), cpu_seconds(shim)
    began = time.monotonic()
    await asyncio.sleep(window)
    seconds = time.monotonic() - began
    phase.server[n] = (cpu_seconds(server) - before[0]) / seconds
    phase.shim[n] = (cpu_seconds(shim) - before[1]) / seconds
    stop.set()
    await load


async def _measure(
    stack: Stack, token: str, job_id: str, phases: list[Phase], rounds: int, window: float
) -> None:
    assert stack.shim_url is not None
    http = httpx.AsyncClient(
        base_url=stack.shim_url,
        headers={"Authorization": f"Bearer {token}"},
        timeout=httpx.Timeout(30, read=None),
        limits=httpx.Limits(max_connections=STREAMS + 10),
    )
    async with http:
        for n in range(rounds):
            for phase in phases[n % len(phases) :] + phases[: n % len(phases)]:
                await _round(stack, http, job_id, phase, n, window)
                print(
                    f"  round {n + 1}, {phase.name}: server {phase.server[n] * 1000:.1f} ms/s,"
                    f" shim {phase.shim[n] * 1000:.1f} ms/s",
                    flush=True,
                )


def run(config: BenchConfig) -> list[Row]:
    rounds = config.rounds or (1 if config.quick else 3)
    window = 10.0 if config.quick else 30.0
    phases = [Phase("streams", _streams), Phase("poll", _poll), Phase("idle", _nothing)]
    with (
        tempfile.TemporaryDirectory(prefix="mm-bench-sse-") as tmp,
        scan_stack(FORKSERVER, Path(tmp)) as (stack, http, server_id),
    ):
        response = http.post(
            f"/api/servers/{server_id}/scan", json={"scan_type": "quick", "delay": DELAY_MS}
        )
        response.raise_for_status()
        job_id = str(response.json()["data"]["jobId"])
        token = http.headers["Authorization"].removeprefix("Bearer ")
        asyncio.run(_measure(stack, token, job_id, phases, rounds, window))
    streams, poll, idle = phases
    ratio = median([streams.server[n] / poll.server[n] for n in streams.server])
    return [
        Row(
            f"{STREAMS} open event streams (`GET /api/jobs/:id/events` on one delayed job):"
            f" Prefect server CPU over {window:.0f} s windows, alternating rounds: {rounds}"
            f" (idle: {idle.per_second(idle.server)}; shim: streams"
            f" {streams.per_second(streams.shim)}, poll {poll.per_second(poll.shim)})",
            f"{streams.per_second(streams.server)}",
            f"{poll.per_second(poll.server)} one client polling `GET /api/jobs/:id` once a second",
            f"{ratio:.2f}x",
            "<= 1.0x",
            ratio <= 1.0,
        )
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="one round of 10 s windows")
    parser.add_argument("--rounds", type=int, default=None)
    args = parser.parse_args()
    os.environ.setdefault("DO_NOT_TRACK", "1")
    print(table(run(BenchConfig(quick=args.quick, rounds=args.rounds))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
