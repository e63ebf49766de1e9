"""Jobs per minute and dispatch latency of quick scans, embedded vs scaled, 1 vs 2 workers/pool.

    uv run python bench/dispatch_modes.py [--jobs 30] [--modes embedded,scaled] [--hosts 1,2]

For each mode and number of worker hosts it starts the stack (one Prefect server; scaled mode on
a fresh PostgreSQL database and Redis DB 12, both removed afterwards), an sshd on loopback, then
submits `--jobs` quick scans at once to the scan pool (limit 5) and waits for all of them.
Dispatch latency = a run's creation -> its Running state (pickup by a worker + process start);
jobs per minute = jobs / (first creation -> last final state). Not a test: numbers for
BENCHMARKS.md, printed as a Markdown table.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import statistics
import tempfile
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import yaml
from prefect.client.schemas.objects import StateType

from deployments.system.local_target import LocalTarget, free_port
from deployments.system.stack import Stack
from tasks.core.settings import BackendSettings
from tests.support.scaled import REDIS_DB_BENCH, auth_string, scaled_backend


@contextlib.contextmanager
def backend_for(mode: str) -> Iterator[BackendSettings]:
    if mode == "embedded":
        yield BackendSettings(database_url=None, redis_url=None)
    else:
        with scaled_backend(redis_db=REDIS_DB_BENCH, prefix="mm_bench") as backend:
            yield backend


def measure(mode: str, hosts: int, jobs: int, work: Path) -> dict[str, float]:
    target = LocalTarget(home=work / "target").start()
    try:
        server_id = str(uuid.uuid4())
        inventory = work / "inventory.yaml"
        entry = target.server_entry(server_id, "bench")
        inventory.write_text(yaml.safe_dump({"servers": [entry]}))
        with backend_for(mode) as backend:
            stack = Stack(
                work / "stack",
                port=free_port(),
                inventory=inventory,
                api_port=None,
                ui=False,
                backend=backend,
                hosts=hosts,
                auth_string=auth_string() if backend.scaled else None,
            )
            with stack, stack.sync_client() as client:
                deployment = client.read_deployment_by_name("scan/scan")
                ids = [
                    client.create_flow_run_from_deployment(
                        deployment.id, parameters={"server_id": server_id, "job_type": "scan:quick"}
                    ).id
                    for _ in range(jobs)
                ]
                pending = set(ids)
                while pending:
                    for run_id in list(pending):
                        state = client.read_flow_run(run_id).state
                        if state is not None and state.is_final():
                            pending.discard(run_id)
                    time.sleep(0.5)
                latencies, created, ended, completed = [], [], [], 0
                for run_id in ids:
                    run = client.read_flow_run(run_id)
                    states = sorted(client.read_flow_run_states(run_id), key=lambda s: s.timestamp)
                    running = next(s.timestamp for s in states if s.type is StateType.RUNNING)
                    assert run.created is not None
                    latencies.append((running - run.created).total_seconds())
                    created.append(run.created)
                    ended.append(states[-1].timestamp)
                    completed += run.state is not None and run.state.is_completed()
        span = (max(ended) - min(created)).total_seconds()
        latencies.sort()
        return {
            "jobs_per_min": jobs / span * 60,
            "p50": statistics.median(latencies),
            "p95": latencies[max(0, round(0.95 * len(latencies)) - 1)],
            "completed": completed,
        }
    finally:
        target.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, default=30)
    parser.add_argument("--modes", default="embedded,scaled")
    parser.add_argument("--hosts", default="1,2", help="workers per pool to try")
    args = parser.parse_args()
    os.environ.setdefault("DO_NOT_TRACK", "1")
    rows = []
    for mode in args.modes.split(","):
        for hosts in (int(h) for h in args.hosts.split(",")):
            with tempfile.TemporaryDirectory(prefix="mm-bench-") as tmp:
                result = measure(mode, hosts, args.jobs, Path(tmp))
            rows.append(
                f"| {mode} | {hosts} | {args.jobs} | {result['completed']:.0f} "
                f"| {result['jobs_per_min']:.1f} | {result['p50']:.1f} | {result['p95']:.1f} |"
            )
            print(rows[-1], flush=True)
    print(
        f"\n{datetime.now(UTC):%Y-%m-%d}, {platform.node()}, {os.cpu_count()} cores, "
        f"python {platform.python_version()}"
    )
    print("| mode | workers/pool | jobs | completed | jobs/min | dispatch p50 s | p95 s |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
