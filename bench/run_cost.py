"""Where a job's CPU goes: each process of the stack, over a burst of quick scans.

    uv run python -m bench.run_cost [--scans 40] [--worker-type process] [--requests]

Starts the embedded stack with an sshd on loopback, runs one scan to warm up, then POSTs
`--scans` quick scans through the API shim at once and waits for them all. It reads the CPU
time (user + system, with ended children's) of the Prefect server, the shim and each worker
(a worker's runs are its children, or its fork server's) before and after, and prints each
one's share per scan, with the scans per minute and the most running at once. The CPU figures
move much less with the machine's load than the times do. Session 3 used it, with
`py-spy record --gil -p <pid>` on the server and the scan worker, to find what to cut.

`--requests` also counts the requests Prefect's server answered during the scans, by endpoint
(bench/request_log), per scan: unlike the times, the same on any machine, so a change that
spares a request shows in one run. The benchmark's own polling is among them (`flow_runs/filter`,
`flow_run_states/`).
"""

from __future__ import annotations

import argparse
import os
import re
import tempfile
import uuid
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

from bench.dispatch import _post_scan, _wait_final, scan_stack
from deployments.system.local_target import descendants
from deployments.system.stack import FORKSERVER, Stack
from tests.support.runs import max_overlap, running_interval

TICKS = os.sysconf("SC_CLK_TCK")
REQUEST_LOG_DIR = Path(__file__).parent / "request_log"
_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def cpu_seconds(pid: int) -> float:
    """utime + stime + cutime + cstime of `pid`; 0 if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return sum(int(value) for value in fields[11:15]) / TICKS


def stack_cpu(stack: Stack) -> dict[str, float]:
    """CPU seconds so far of the server, the shim and each worker with its live descendants."""
    parts = {"prefect server": stack.server, "api shim": stack.shim}
    parts.update({f"worker {', '.join(c.pools)}": c for c in stack.worker_processes()})
    out = {}
    for name, child in parts.items():
        pid = child.pid if child is not None else None
        if pid is not None:
            out[name] = cpu_seconds(pid) + sum(cpu_seconds(p) for p in descendants(pid))
    return out


def request_counts(log: Path, start: int) -> Counter[str]:
    """Requests in `log` after its first `start` lines, by method and path (ids as `{id}`)."""
    if not log.exists():
        return Counter()
    lines = log.read_text().splitlines()[start:]
    return Counter(_ID.sub("{id}", line) for line in lines)


def measure(scans: int, worker_type: str, work: Path, requests: bool) -> None:
    log = work / "requests.log"
    env = {"PYTHONPATH": str(REQUEST_LOG_DIR), "MM_BENCH_REQUEST_LOG": str(log)} if requests else {}
    with scan_stack(worker_type, work, env) as (stack, http, server_id):
        before, first = stack_cpu(stack), datetime.now(UTC)
        logged = len(log.read_text().splitlines()) if log.exists() else 0
        run_ids = [_post_scan(http, server_id)[0] for _ in range(scans)]
        _wait_final(stack, run_ids, 60 + scans * 10)
        after = stack_cpu(stack)
        counts = request_counts(log, logged)
        with stack.sync_client() as client:
            intervals = [
                running_interval(client.read_flow_run_states(uuid.UUID(run_id)))
                for run_id in run_ids
            ]
    span = (max(end for _, end in intervals) - first).total_seconds()
    print(
        f"{scans} quick scans ({worker_type}): {scans / span * 60:.0f} a minute, "
        f"most running at once {max_overlap(intervals)}"
    )
    total = 0.0
    for name in after:
        spent = after[name] - before.get(name, 0.0)
        total += spent
        print(f"  {name:24} {spent:6.1f} CPU-s  {spent / scans * 1000:5.0f} ms a scan")
    print(f"  {'all':24} {total:6.1f} CPU-s  {total / scans * 1000:5.0f} ms a scan")
    if requests:
        print(f"requests to Prefect's server: {sum(counts.values()) / scans:.1f} a scan")
        for endpoint, count in counts.most_common():
            print(f"  {count / scans:5.2f}  {endpoint}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--scans", type=int, default=40)
    parser.add_argument("--worker-type", default=FORKSERVER)
    parser.add_argument(
        "--requests", action="store_true", help="count the server's requests per scan too"
    )
    args = parser.parse_args()
    os.environ.setdefault("DO_NOT_TRACK", "1")
    with tempfile.TemporaryDirectory(prefix="mm-bench-cost-") as tmp:
        measure(args.scans, args.worker_type, Path(tmp), args.requests)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
