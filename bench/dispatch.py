"""Issue 21's goals 3 and 4: quick scans per minute and dispatch latency, fork server vs stock.

    uv run python -m bench.dispatch [--quick] [--samples N]

For each worker type (`forkserver`, ours; `process`, Prefect's stock one) it starts the embedded
stack with an sshd on loopback and, through the API shim:

- dispatch latency: `--samples` quick scans, one at a time with the pools idle; latency =
  `POST /api/servers/:id/scan` sent -> the run's Running state (the job is `active`);
- throughput: 60 quick scans (20 with `--quick`) posted at once; scans per minute = scans /
  (first POST -> last final state), and the most Running at once from the state history.

Goals: dispatch p50 <= 0.2 s and p95 <= 0.3 s; >= 200 quick scans a minute, never more than 5
Running at once. The stock worker's figures are the reference, not a goal.

Both sides run in the same invocation, one after the other, so they share the machine's noise.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import httpx
import yaml
from prefect.client.schemas.objects import StateType

from bench.report import BenchConfig, Row, table
from deployments.system.local_target import LocalTarget, free_port
from deployments.system.stack import FORKSERVER, Stack
from tasks.core.callers import mint_token
from tests.support.burst import wait_final
from tests.support.runs import max_overlap, running_interval

STOCK = "process"
SCAN_LIMIT = 5
#: Issue 21's goals: seconds from POST to active at the median and p95, quick scans a minute.
LATENCY_GOALS = {"p50": (0.5, 0.2), "p95": (0.95, 0.3)}
SCANS_PER_MINUTE = 200


@dataclass(frozen=True)
class Measured:
    latencies: list[float]
    per_minute: float
    completed: int
    burst: int
    most_running: int

    def p(self, quantile: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, round(quantile * (len(ordered) - 1)))]


def _post_scan(http: httpx.Client, server_id: str) -> tuple[str, datetime]:
    sent = datetime.now(UTC)
    response = http.post(f"/api/servers/{server_id}/scan", json={"scan_type": "quick"})
    response.raise_for_status()
    return str(response.json()["data"]["jobId"]), sent


def _wait_final(stack: Stack, run_ids: list[str], timeout: float) -> None:
    # One query for all of them per poll: a read per run per poll would load the server
    # being measured.
    with stack.sync_client() as client:
        wait_final(client, [uuid.UUID(run_id) for run_id in run_ids], timeout, poll=0.25)


@contextmanager
def scan_stack(
    worker_type: str, work: Path, extra_env: dict[str, str] | None = None
) -> Iterator[tuple[Stack, httpx.Client, str]]:
    """The embedded stack with one server (an sshd on loopback) and an admin client of the
    shim, after one unmeasured scan: the first run of a fresh stack warms caches on both sides.
    Yields the stack, the client and the server's id."""
    target = LocalTarget(home=work / "target").start()
    try:
        server_id = str(uuid.uuid4())
        inventory = work / "inventory.yaml"
        inventory.write_text(yaml.safe_dump({"servers": [target.server_entry(server_id, "bench")]}))
        stack = Stack(
            work / "stack",
            port=free_port(),
            inventory=inventory,
            api_port=free_port(),
            ui=False,
            worker_type=worker_type,
            extra_env=extra_env or {},
        )
        with stack:
            assert stack.shim_url is not None and stack.jwt_secret is not None
            token = mint_token(stack.jwt_secret, "bench", "admin")
            headers = {"Authorization": f"Bearer {token}"}
            with httpx.Client(base_url=stack.shim_url, headers=headers, timeout=30) as http:
                warm, _ = _post_scan(http, server_id)
                _wait_final(stack, [warm], 120)
                yield stack, http, server_id
    finally:
        target.stop()


def measure(worker_type: str, samples: int, burst: int, work: Path) -> Measured:
    with scan_stack(worker_type, work) as (stack, http, server_id):
        latencies = []
        for _ in range(samples):
            run_id, sent = _post_scan(http, server_id)
            _wait_final(stack, [run_id], 120)
            with stack.sync_client() as client:
                states = client.read_flow_run_states(uuid.UUID(run_id))
            running = min(s.timestamp for s in states if s.type is StateType.RUNNING)
            latencies.append((running - sent).total_seconds())
        first = datetime.now(UTC)
        run_ids = [_post_scan(http, server_id)[0] for _ in range(burst)]
        _wait_final(stack, run_ids, 60 + burst * 10)
        intervals, ends, completed = [], [], 0
        with stack.sync_client() as client:
            for run_id in run_ids:
                run = client.read_flow_run(uuid.UUID(run_id))
                completed += run.state is not None and run.state.is_completed()
                interval = running_interval(client.read_flow_run_states(uuid.UUID(run_id)))
                intervals.append(interval)
                ends.append(interval[1])
    span = (max(ends) - first).total_seconds()
    return Measured(latencies, burst / span * 60, completed, burst, max_overlap(intervals))


def run(config: BenchConfig) -> list[Row]:
    samples = 5 if config.quick else (config.rounds or 15)
    burst = 20 if config.quick else 60
    results: dict[str, Measured] = {}
    for worker_type in (FORKSERVER, STOCK):
        with tempfile.TemporaryDirectory(prefix=f"mm-bench-{worker_type}-") as tmp:
            results[worker_type] = measure(worker_type, samples, burst, Path(tmp))
    ours, stock = results[FORKSERVER], results[STOCK]
    rows = []
    for label, (quantile, goal) in LATENCY_GOALS.items():
        mine, theirs = ours.p(quantile), stock.p(quantile)
        rows.append(
            Row(
                f"dispatch latency {label}, POST -> active, pools idle ({samples} scans)",
                f"{mine:.2f} s (fork server)",
                f"{theirs:.2f} s (stock process worker)",
                f"{mine / theirs:.2f}x",
                f"<= {goal} s",
                mine <= goal,
            )
        )
    rows.append(
        Row(
            f"quick scans per minute, scan pool (limit {SCAN_LIMIT}), {burst} at once",
            f"{ours.per_minute:.0f}/min, {ours.completed}/{burst} completed, "
            f"most running {ours.most_running}",
            f"{stock.per_minute:.0f}/min, {stock.completed}/{burst} completed, "
            f"most running {stock.most_running}",
            f"{ours.per_minute / stock.per_minute:.1f}x",
            f">= {SCANS_PER_MINUTE}/min, never > {SCAN_LIMIT} running",
            ours.per_minute >= SCANS_PER_MINUTE
            and ours.completed == burst
            and ours.most_running <= SCAN_LIMIT
            and stock.most_running <= SCAN_LIMIT,
        )
    )
    for worker_type, measured in results.items():
        rows.append(
            Row(
                f"dispatch latency, all samples ({worker_type})",
                ", ".join(f"{x:.2f}" for x in measured.latencies),
                "-",
                "-",
                "-",
                None,
            )
        )
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--samples", type=int, default=None)
    args = parser.parse_args()
    os.environ.setdefault("DO_NOT_TRACK", "1")
    print(table(run(BenchConfig(quick=args.quick, rounds=args.samples))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
