"""Goal 4: the API shim against direct Prefect API reads, on a database of 100,000 flow runs.

    uv run python -m bench.api [--runs 100000] [--samples 41]

Starts a Prefect server on a fresh SQLite database (no workers), bootstraps the deployments and
seeds the runs straight into Prefect's tables (`bench.api_100k.seed`). One completed run gets
what a real backup leaves behind: a progress artifact, a result artifact and five task runs.
Then, with the shim started:

- `GET /api/jobs/:id` against Prefect's `GET /api/flow_runs/{id}` of the same run, alternating
  call by call, p50 of `--samples` each after warm-up (the goal: <= 1.5x); then, reported
  only, the CPU per call the shim and the server spend (`/proc`, the server's idle rate
  subtracted), which the machine's load disturbs less than the times, and `--samples` other
  finished jobs read once each (the shim's first read of a job);
- `GET /api/jobs/stats/all` and `GET /api/jobs?limit=200`, for an admin (every run) and for
  a user (the runs tagged with their id), median of `--calls` (the goal: < 1 s), beside
  Prefect's own count and page read of all runs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable
from functools import partial
from pathlib import Path

import httpx

from bench.api_100k import USERS, deployment_targets, seed
from bench.report import BenchConfig, Row, table
from deployments.system.local_target import descendants, free_port
from deployments.system.stack import Stack
from tasks.core.callers import mint_token

GOAL_RATIO = 1.5
GOAL_MS = 1000.0


def run(config: BenchConfig, *, samples: int = 41, calls: int = 7) -> list[Row]:
    runs = config.api_runs
    with tempfile.TemporaryDirectory(prefix="mm-bench-api-") as tmp:
        data_dir = Path(tmp)
        inventory = data_dir / "inventory.yaml"
        inventory.write_text("servers: []\n")
        stack = Stack(
            data_dir, port=free_port(), api_port=free_port(), ui=False, inventory=inventory
        )
        try:
            stack.start_server()
            asyncio.run(stack._ensure_pools())
            stack.bootstrap()
            targets = asyncio.run(deployment_targets(stack))
            began = time.monotonic()
            seed(stack.prefect_home / "prefect.db", targets, runs)
            print(f"  seeded {runs:,} flow runs in {time.monotonic() - began:.0f} s", flush=True)
            stack.start_shim()
            job_id = _dress_a_run(stack)
            return _measure(stack, job_id, runs, samples, calls)
        finally:
            stack.stop()


def _dress_a_run(stack: Stack) -> str:
    """A completed run with what a real backup leaves: progress, result, task runs."""
    with stack.http(timeout=60) as prefect:
        found = prefect.post(
            "/flow_runs/filter",
            json={"flow_runs": {"state": {"type": {"any_": ["COMPLETED"]}}}, "limit": 1},
        )
        found.raise_for_status()
        run_id = str(found.json()[0]["id"])
        result = {"backupId": str(uuid.uuid4()), "status": "completed", "size": 1 << 30}
        artifacts: list[dict[str, object]] = [
            {"type": "progress", "data": 100.0, "description": "backup record updated"},
            {"type": "table", "data": json.dumps([result])},
        ]
        for artifact in artifacts:
            prefect.post("/artifacts/", json={**artifact, "flow_run_id": run_id}).raise_for_status()
        for n, name in enumerate(["verify server", "create backup record", "transfer archive"]):
            prefect.post(
                "/task_runs/",
                json={
                    "name": name,
                    "flow_run_id": run_id,
                    "task_key": f"bench-{n}",
                    "dynamic_key": "0",
                    "state": {"type": "COMPLETED", "name": "Completed"},
                },
            ).raise_for_status()
    return run_id


def _measure(stack: Stack, job_id: str, runs: int, samples: int, calls: int) -> list[Row]:
    assert stack.shim_url and stack.jwt_secret
    admin = {"Authorization": f"Bearer {mint_token(stack.jwt_secret, 'root', 'admin')}"}
    user = {"Authorization": f"Bearer {mint_token(stack.jwt_secret, USERS[0])}"}
    with (
        httpx.Client(base_url=stack.shim_url, timeout=120) as shim,
        stack.http(timeout=120) as prefect,
    ):
        ours, ref = _alternate(
            lambda: shim.get(f"/api/jobs/{job_id}", headers=admin),
            lambda: prefect.get(f"/flow_runs/{job_id}"),
            samples,
        )
        cpu_ours, cpu_ref = _cpu_per_call(
            stack,
            lambda: shim.get(f"/api/jobs/{job_id}", headers=admin),
            lambda: prefect.get(f"/flow_runs/{job_id}"),
            samples,
        )
        cold_ids = iter(_completed_runs(prefect, samples + 2))
        cold_ours, cold_ref = _alternate(
            lambda: shim.get(f"/api/jobs/{next(cold_ids)}", headers=admin),
            lambda: prefect.get(f"/flow_runs/{job_id}"),
            samples,
            warm_up=False,
        )
        rows = [
            Row(
                "API `GET /api/jobs/:id` of a finished job, p50 (read before: one Prefect read)",
                f"{ours:.1f} ms",
                f"{ref:.1f} ms Prefect `GET /api/flow_runs/{{id}}`",
                f"{ours / ref:.2f}x",
                f"<= {GOAL_RATIO}x",
                ours / ref <= GOAL_RATIO,
            ),
            Row(
                "API `GET /api/jobs/:id` of a finished job: CPU per call, shim + Prefect server"
                " (less sensitive to the machine's load than the times)",
                f"{cpu_ours:.1f} ms CPU",
                f"{cpu_ref:.1f} ms CPU, the Prefect server for `GET /api/flow_runs/{{id}}`",
                f"{cpu_ours / cpu_ref:.2f}x",
                "reported",
                None,
            ),
            Row(
                "API `GET /api/jobs/:id`, each job read once (three Prefect reads), p50",
                f"{cold_ours:.1f} ms",
                f"{cold_ref:.1f} ms Prefect `GET /api/flow_runs/{{id}}`",
                f"{cold_ours / cold_ref:.2f}x",
                "reported",
                None,
            ),
        ]
        count_all = _median(lambda: prefect.post("/flow_runs/count", json={}), calls)
        page_all = _median(
            lambda: prefect.post(
                "/flow_runs/filter", json={"limit": 200, "sort": "EXPECTED_START_TIME_DESC"}
            ),
            calls,
        )
        cases = [
            ("/api/jobs/stats/all", f"{count_all:.0f} ms Prefect count of all runs"),
            ("/api/jobs?limit=200", f"{page_all:.0f} ms Prefect page of 200 runs"),
        ]
        for who, headers in (("admin", admin), ("a user's", user)):
            for path, reference in cases:
                ms = _median(partial(shim.get, path, headers=headers), calls)
                rows.append(
                    Row(
                        f"API `GET {path}` ({who}), {runs:,} runs stored, median",
                        f"{ms:.0f} ms",
                        reference,
                        "-",
                        f"< {GOAL_MS / 1000:.0f} s",
                        ms < GOAL_MS,
                    )
                )
    return rows


def _cpu_seconds(pids: list[int]) -> float:
    """User + system CPU of these processes and their descendants so far."""
    ticks = 0
    for pid in {p for root in pids for p in (root, *descendants(root))}:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def _cpu_per_call(
    stack: Stack,
    ours: Callable[[], httpx.Response],
    ref: Callable[[], httpx.Response],
    samples: int,
) -> tuple[float, float]:
    """ms of CPU the shim and the server spend per call, minus the server's idle rate."""
    assert stack.server and stack.server.pid and stack.shim and stack.shim.pid
    pids = [stack.server.pid, stack.shim.pid]
    began, cpu = time.monotonic(), _cpu_seconds(pids)
    time.sleep(2.0)
    idle_rate = (_cpu_seconds(pids) - cpu) / (time.monotonic() - began)
    found = []
    for call in (ours, ref):
        calls = samples * 4
        began, cpu = time.monotonic(), _cpu_seconds(pids)
        for _ in range(calls):
            call().raise_for_status()
        spent = _cpu_seconds(pids) - cpu - idle_rate * (time.monotonic() - began)
        found.append(spent / calls * 1000)
    return found[0], found[1]


def _completed_runs(prefect: httpx.Client, count: int) -> list[str]:
    found = prefect.post(
        "/flow_runs/filter",
        json={
            "flow_runs": {"state": {"type": {"any_": ["COMPLETED"]}}},
            "offset": 1,
            "limit": count,
        },
    )
    found.raise_for_status()
    return [str(run["id"]) for run in found.json()]


def _alternate(
    ours: Callable[[], httpx.Response],
    ref: Callable[[], httpx.Response],
    samples: int,
    *,
    warm_up: bool = True,
) -> tuple[float, float]:
    """p50 in ms of each, called alternately (after a warm-up of each)."""
    for call in (ours, ref, ours, ref) if warm_up else ():
        call().raise_for_status()
    times: dict[int, list[float]] = {0: [], 1: []}
    for n in range(samples * 2):
        side = n % 2
        began = time.perf_counter()
        (ours if side == 0 else ref)().raise_for_status()
        times[side].append((time.perf_counter() - began) * 1000)
    return statistics.median(times[0]), statistics.median(times[1])


def _median(call: Callable[[], httpx.Response], calls: int) -> float:
    call().raise_for_status()
    times = []
    for _ in range(calls):
        began = time.perf_counter()
        call().raise_for_status()
        times.append((time.perf_counter() - began) * 1000)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=100_000)
    parser.add_argument("--samples", type=int, default=41, help="job reads per side")
    parser.add_argument("--calls", type=int, default=7, help="timed calls per list endpoint")
    args = parser.parse_args()
    config = BenchConfig(api_runs=args.runs)
    print(table(run(config, samples=args.samples, calls=args.calls)))


if __name__ == "__main__":
    main()
