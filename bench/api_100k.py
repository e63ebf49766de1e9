"""How fast the API shim answers on a Prefect database with 100,000 flow runs.

    uv run python bench/api_100k.py [--runs 100000] [--calls 7] [--write BENCHMARKS.md]

Starts a Prefect server on a fresh SQLite database (no workers, so nothing runs), bootstraps
the pools and deployments, inserts the runs straight into Prefect's own tables in one
transaction (100,000 API calls would take an hour), starts the shim, and times the shim's
stats and list endpoints against direct Prefect API reads. Not a test: numbers for BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import sqlite3
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path

import httpx

from deployments.control.catalogue import DEPLOYMENTS, user_tag
from deployments.system.local_target import free_port
from deployments.system.stack import Stack
from tasks.core.callers import mint_token

#: (Prefect state type, state name, share of runs).
MIX = [
    ("COMPLETED", "Completed", 0.85),
    ("FAILED", "Failed", 0.07),
    ("CRASHED", "Crashed", 0.02),
    ("CANCELLED", "Cancelled", 0.02),
    ("SCHEDULED", "Scheduled", 0.03),  # due in the future: delayed
    ("RUNNING", "Running", 0.01),
]
USERS = [f"user-{n}" for n in range(50)]
FMT = "%Y-%m-%d %H:%M:%S.%f"  # how Prefect's SQLite tables store times (UTC)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=100_000)
    parser.add_argument("--calls", type=int, default=7, help="timed calls per endpoint")
    parser.add_argument("--write", type=Path, default=None, help="append the table here")
    parser.add_argument(
        "--index",
        action="store_true",
        help="add an index on flow_run(deployment_id, state_type) first, to compare",
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="mm-bench-") as tmp:
        data_dir = Path(tmp)
        inventory = data_dir / "inventory.yaml"
        inventory.write_text("servers: []\n")
        stack = Stack(
            data_dir, port=free_port(), api_port=free_port(), ui=False, inventory=inventory
        )
        try:
            began = time.monotonic()
            stack.start_server()
            asyncio.run(stack._ensure_pools())
            stack.bootstrap()
            targets = asyncio.run(deployment_targets(stack))
            print(f"stack ready in {time.monotonic() - began:.1f} s")
            began = time.monotonic()
            seed(stack.prefect_home / "prefect.db", targets, args.runs, args.index)
            seeded = time.monotonic() - began
            print(f"seeded {args.runs} flow runs in {seeded:.1f} s")
            stack.start_shim()
            rows = measure(stack, args.calls, targets)
        finally:
            stack.stop()
    table = render(rows, args.runs, args.calls, seeded, args.index)
    print(table)
    if args.write:
        with open(args.write, "a") as out:
            out.write(table)


async def deployment_targets(stack: Stack) -> list[dict[str, str]]:
    """Ids the seeded runs point at: each deployment's flow, its pool's default work queue."""
    found = []
    async with stack.client() as client:
        for deployment in DEPLOYMENTS:
            d = await client.read_deployment_by_name(deployment.full_name)
            queue_name = deployment.queue.default_priority.queue_name
            wq = await client.read_work_queue_by_name(
                queue_name, work_pool_name=deployment.queue.name
            )
            found.append(
                {
                    "flow_id": str(d.flow_id),
                    "deployment_id": str(d.id),
                    "work_queue_id": str(wq.id),
                    "work_queue_name": queue_name,
                    "pool": deployment.queue.name,
                }
            )
    return found


def seed(
    db: Path, targets: list[dict[str, str]], count: int, index: bool = False, days: float = 6
) -> None:
    """Insert `count` runs with their current states, spread over the last `days` days."""
    rng = random.Random(7)
    now = datetime.now(UTC).replace(tzinfo=None)
    types = [m[:2] for m in MIX]
    weights = [m[2] for m in MIX]
    runs, states = [], []
    for i in range(count):
        target = targets[i % len(targets)]
        state_type, state_name = rng.choices(types, weights)[0]
        created = now - timedelta(seconds=rng.uniform(60, days * 86400))
        expected = created
        next_scheduled = None
        start = end = None
        if state_type == "SCHEDULED":
            expected = now + timedelta(hours=rng.uniform(1, 48))
            next_scheduled = expected
        elif state_type != "CANCELLED":
            start = created + timedelta(seconds=rng.uniform(1, 10))
            if state_type != "RUNNING":
                end = start + timedelta(seconds=rng.uniform(5, 600))
        run_id, state_id = str(uuid.uuid4()), str(uuid.uuid4())
        stamp = end or start or created
        user = rng.choice(USERS)
        job_type = {"backup": "backup:manual", "scan": "scan:full", "update": "update:server"}[
            target["pool"]
        ]
        params = {"server_id": str(uuid.uuid4()), "user_id": user, "job_type": job_type}
        tags = ["medicine-man", f"job:{job_type}", user_tag(user)]
        details = (
            {"scheduled_time": next_scheduled.isoformat() + "+00:00"} if next_scheduled else {}
        )
        t = lambda d: d.strftime(FMT) if d else None  # noqa: E731
        runs.append(
            (
                run_id, t(created), t(stamp), f"{job_type} {i}", state_type,
                1 if start else 0, t(expected), t(next_scheduled), t(start), t(end),
                "1970-01-01 00:00:00.000000", None, json.dumps(params), None, "{}",
                '{"max_retries": 0, "retry_delay_seconds": 0.0, "retries": 0, "retry_delay": 0,'
                ' "pause_keys": [], "resuming": false, "retry_type": null}',
                json.dumps(tags), 0, target["flow_id"], target["deployment_id"], None, state_id,
                state_name, None, target["work_queue_name"], t(stamp), None, None,
                target["work_queue_id"], "{}", None, "{}",
            )
        )  # fmt: skip
        message = "Flow run encountered an exception: seeded" if state_type == "FAILED" else None
        states.append(
            (
                state_id, t(stamp), t(stamp), state_type, t(stamp), state_name, message,
                json.dumps(details), None, run_id, None,
            )
        )  # fmt: skip
    with sqlite3.connect(db, timeout=60) as conn:
        conn.executemany(f"INSERT INTO flow_run VALUES ({','.join('?' * 32)})", runs)
        conn.executemany(f"INSERT INTO flow_run_state VALUES ({','.join('?' * 11)})", states)
        if index:
            # Not one of Prefect's own: lets a count by deployment and state read the index only.
            conn.execute(
                "CREATE INDEX IF NOT EXISTS ix_mm_flow_run__deployment_state"
                " ON flow_run (deployment_id, state_type)"
            )
            conn.execute("ANALYZE")


def measure(
    stack: Stack, calls: int, targets: list[dict[str, str]]
) -> list[tuple[str, float, float, str]]:
    assert stack.shim_url and stack.jwt_secret
    admin = {"Authorization": f"Bearer {mint_token(stack.jwt_secret, 'root', 'admin')}"}
    user = {"Authorization": f"Bearer {mint_token(stack.jwt_secret, USERS[0])}"}
    body = {"limit": 200, "sort": "EXPECTED_START_TIME_DESC"}
    with (
        httpx.Client(base_url=stack.shim_url, timeout=120) as shim,
        stack.http(timeout=120) as prefect,
    ):
        shim_paths = {
            "stats/all (admin)": ("/api/jobs/stats/all", admin),
            "jobs?limit=200 (admin)": ("/api/jobs?limit=200", admin),
            "stats/all (user)": ("/api/jobs/stats/all", user),
            "jobs?limit=200 (user)": ("/api/jobs?limit=200", user),
            "jobs?state=failed&limit=200": ("/api/jobs?state=failed&limit=200", admin),
            "jobs?state=delayed&limit=200": ("/api/jobs?state=delayed&limit=200", admin),
            "jobs?state=waiting&limit=200": ("/api/jobs?state=waiting&limit=200", admin),
            "metrics/queues": ("/api/metrics/queues", admin),
        }
        cases: list[tuple[str, Callable[[], httpx.Response]]] = [
            (f"shim GET {name}", partial(shim.get, path, headers=headers))
            for name, (path, headers) in shim_paths.items()
        ]
        completed = {"state": {"type": {"any_": ["COMPLETED"]}}}
        by_pool = {"flow_runs": completed, "work_pools": {"name": {"any_": ["backup"]}}}
        by_deployment = {
            "flow_runs": {**completed, "deployment_id": {"any_": [targets[0]["deployment_id"]]}}
        }
        count = partial(prefect.post, "/flow_runs/count")
        read = partial(prefect.post, "/flow_runs/filter")
        cases += [
            ("Prefect flow_runs/filter limit 200", partial(read, json=body)),
            ("Prefect count (all)", partial(count, json={})),
            ("Prefect count completed in pool backup", partial(count, json=by_pool)),
            ("Prefect count completed of deployment backup", partial(count, json=by_deployment)),
        ]  # fmt: skip
        rows = []
        for name, call in cases:
            first = call()
            first.raise_for_status()
            times = []
            for _ in range(calls):
                began = time.perf_counter()
                call().raise_for_status()
                times.append((time.perf_counter() - began) * 1000)
            rows.append((name, statistics.median(times), max(times), summary(first)))
            print(f"{name}: median {rows[-1][1]:.0f} ms")
    return rows


def summary(response: httpx.Response) -> str:
    data = response.json()
    if isinstance(data, int):
        return f"{data} runs"
    if isinstance(data, list):
        return f"{len(data)} runs"
    inner = data.get("data", {})
    if "total" in inner:
        return f"{inner['count']} of {inner['total']}"
    if "backup" in inner:
        return f"backup total {inner['backup']['total']}"
    return ""


def render(
    rows: list[tuple[str, float, float, str]], runs: int, calls: int, seeded: float, index: bool
) -> str:
    cpu = next(
        (line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
         if line.startswith("model name")),
        platform.processor(),
    )  # fmt: skip
    mem = int(Path("/proc/meminfo").read_text().split()[1]) // (1 << 20)
    lines = [
        f"\n## API shim on {runs:,} flow runs (`bench/api_100k.py`)\n",
        f"- Command: `uv run python bench/api_100k.py --runs {runs} --calls {calls}"
        + (" --index`" if index else "`")
        + (" (with an index on flow_run(deployment_id, state_type))" if index else ""),
        f"- Date: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC; machine: {cpu}, {os.cpu_count()} cores, "
        f"{mem} GiB RAM, Python {platform.python_version()}, Prefect on SQLite",
        f"- Load average while measuring: {os.getloadavg()[0]:.1f}; seeding took {seeded:.1f} s",
        f"- Median of {calls} calls after one warm-up; max in the next column.\n",
        "| call | median ms | max ms | answer |",
        "| --- | ---: | ---: | --- |",
        *(f"| {n} | {m:.0f} | {x:.0f} | {s} |" for n, m, x, s in rows),
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
