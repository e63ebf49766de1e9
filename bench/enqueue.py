"""Issue 7: what creating jobs alone costs, through the API shim and straight to Prefect.

    uv run python -m bench.enqueue [--quick] [--rounds N]

`bench.burst` measures issue 21's goal 5 with the burst's runs executing; this is the same
comparison with nothing running beside the creates. One embedded stack with every pool paused
(and Prefect's late-runs service off, so held runs do not turn Late between rounds). The burst
of issue 7 (300 quick scans, 60 backups, 6 updates from 10 clients over 10 s) is sent in
alternating rounds two ways:

- through the shim, `POST /api/servers/:id/{scan,backup,update}`, as users do;
- straight to Prefect's `POST /deployments/{id}/create_flow_run` (`bench.burst.direct_burst`:
  the `enqueue` and Prefect client the shim uses, with its parameters, tags, queue and kind of
  idempotency key): the floor any API in front of Prefect stands on.

Per round: the latency p50/p95 and the CPU the Prefect server and the shim spent per job (from
/proc). The ratio is the shim's p95 over Prefect's own in the same run, judged against goal 5's
1.1x.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import httpx

from bench.burst import CLIENTS, RATIO_GOAL, SPREAD, Bench, direct_burst, start
from bench.report import BenchConfig, Row, load, machine, now, table
from bench.run_cost import cpu_seconds
from tasks.core.callers import mint_token
from tests.support.burst import post_burst, quantile

USER = "bench-enqueue"


@dataclass(frozen=True)
class Side:
    """One round of one way of enqueueing."""

    seconds: list[float]
    failures: int
    server_ms: float
    shim_ms: float

    @property
    def p50(self) -> float:
        return quantile(self.seconds, 0.5)

    @property
    def p95(self) -> float:
        return quantile(self.seconds, 0.95)


def _round(bench: Bench, token: str, direct: bool) -> Side:
    stack = bench.stack
    assert stack.server is not None and stack.shim is not None and stack.shim_url is not None
    server_pid, shim_pid = stack.server.pid, stack.shim.pid
    assert server_pid is not None and shim_pid is not None
    before = cpu_seconds(server_pid), cpu_seconds(shim_pid)
    if direct:
        answers = asyncio.run(direct_burst(stack, bench.deployments, bench.plan, USER))
    else:
        answers = post_burst(stack.shim_url, token, bench.plan, clients=CLIENTS, spread=SPREAD)
    failures = sum(a.job_id is None for a in answers)
    seconds = [a.seconds for a in answers if a.job_id is not None]
    time.sleep(2.0)  # the events of the last creates
    jobs = len(bench.plan)
    return Side(
        seconds,
        failures,
        (cpu_seconds(server_pid) - before[0]) * 1000 / jobs,
        (cpu_seconds(shim_pid) - before[1]) * 1000 / jobs,
    )


def measure(rounds: int, scale: float) -> list[tuple[Side, Side]]:
    """`rounds` pairs (through the shim, straight to Prefect), alternating, on one stack."""
    env = {"PREFECT_SERVER_SERVICES_LATE_RUNS_ENABLED": "false"}
    with tempfile.TemporaryDirectory(prefix="mm-bench-enqueue-") as tmp:
        bench, target = start(Path(tmp), None, scale, extra_env=env, user=USER)
        try:
            stack = bench.stack
            assert stack.jwt_secret is not None and stack.shim_url is not None
            admin = mint_token(stack.jwt_secret, "bench-admin", "admin", ttl=timedelta(hours=1))
            paused = httpx.post(
                f"{stack.shim_url}/api/queues/pause",
                headers={"Authorization": f"Bearer {admin}"},
                json={},
                timeout=30,
            )
            paused.raise_for_status()
            token = mint_token(stack.jwt_secret, USER, "user", ttl=timedelta(hours=1))
            # Warm both paths (connections, caches) before anything is measured.
            warm = bench.plan[:20]
            post_burst(stack.shim_url, token, warm, clients=CLIENTS, spread=1.0)
            asyncio.run(direct_burst(stack, bench.deployments, warm, USER, spread=1.0))
            return [
                (_round(bench, token, False), _round(bench, token, True)) for _ in range(rounds)
            ]
        finally:
            bench.stack.stop()
            target.stop()


def rows(pairs: list[tuple[Side, Side]]) -> list[Row]:
    out = []
    for number, (shim, prefect) in enumerate(pairs, 1):
        out.append(
            Row(
                f"enqueue round {number}: the burst of issue 7, pools paused",
                f"shim p50 {shim.p50 * 1000:.0f} ms, p95 {shim.p95 * 1000:.0f} ms, "
                f"{shim.failures} failed; per job: server {shim.server_ms:.0f} ms CPU, "
                f"shim {shim.shim_ms:.1f} ms CPU",
                f"Prefect's create_flow_run: p50 {prefect.p50 * 1000:.0f} ms, "
                f"p95 {prefect.p95 * 1000:.0f} ms, {prefect.failures} failed; "
                f"server {prefect.server_ms:.0f} ms CPU a job",
                f"{shim.p95 / prefect.p95:.2f}x",
                f"<= {RATIO_GOAL}x, as goal 5",
                shim.p95 <= RATIO_GOAL * prefect.p95 and shim.failures == 0,
            )
        )
    return out


def run(config: BenchConfig) -> list[Row]:
    return rows(measure(config.rounds or (1 if config.quick else 2), 0.2 if config.quick else 1.0))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a fifth of the burst, 1 round")
    parser.add_argument("--rounds", type=int, default=None)
    args = parser.parse_args()
    os.environ.setdefault("DO_NOT_TRACK", "1")
    print(f"{now()}; {machine()}; load {load()}", flush=True)
    pairs = measure(args.rounds or (1 if args.quick else 2), 0.2 if args.quick else 1.0)
    print(table(rows(pairs)))
    server = statistics.fmean(side.server_ms for pair in pairs for side in pair)
    print(f"Prefect server CPU per created job, both ways: {server:.0f} ms; load {load()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
