"""Goal 5: memory of the embedded stack at rest and of each running job's process.

    uv run python -m bench.memory [--quick]

Starts the whole embedded stack (`deployments.system.stack.Stack`: Prefect server, a worker per
pool, the API shim) with an sshd on loopback in its inventory, lets it settle, then sums the
resident memory (RSS) of every process of the stack's process trees, from /proc (no psutil: five
fields of /proc/<pid>/status and smaps_rollup are all it takes). Then, through the shim, a backup of
the cached tree (`bench.tree`) and a quick scan: every process that appears in the stack's
trees during a job is that job's (its run process, its ssh), sampled every 0.1 s; the figure
is the largest sum. PSS (shared pages split among their sharers) and USS (pages of the job's
own) are shown beside RSS, since forked runs share most of their pages with the fork server.

References, measured in the same run: the Prefect server process alone (for the stack), and
a fresh `python -c "import prefect.engine, paramiko"`, the floor of any process that runs a
flow (for the job). The backup also gives one throughput figure through the real flow: the
archive size over the `transfer archive` task's run time.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import yaml
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

from bench.report import BenchConfig, Row, table
from bench.tree import FULL, QUICK, ensure_tree
from deployments.system.local_target import LocalTarget, descendants, free_port
from deployments.system.stack import Child, Stack
from tasks.core.callers import mint_token

MIB = 1 << 20
GOAL_STACK = 1 << 30
GOAL_JOB = 100 * MIB
#: Seconds the stack gets after start before the idle samples (start-up work, first polls).
SETTLE = 15.0


@dataclass(frozen=True)
class Memory:
    """Bytes of a set of processes: resident, proportional, unique."""

    rss: int = 0
    pss: int = 0
    uss: int = 0
    processes: int = 0

    def __add__(self, other: Memory) -> Memory:
        return Memory(
            self.rss + other.rss,
            self.pss + other.pss,
            self.uss + other.uss,
            self.processes + other.processes,
        )

    def describe(self) -> str:
        return f"PSS {self.pss / MIB:.0f} MiB, USS {self.uss / MIB:.0f} MiB"


def memory_of(pid: int) -> Memory:
    """One process, from /proc/<pid>/smaps_rollup; empty if it is gone."""
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return Memory()
    fields = {}
    for line in text.splitlines()[1:]:
        name, _, rest = line.partition(":")
        parts = rest.split()
        if parts and parts[0].isdigit():
            fields[name] = int(parts[0]) * 1024
    return Memory(
        rss=fields.get("Rss", 0),
        pss=fields.get("Pss", 0),
        uss=fields.get("Private_Clean", 0) + fields.get("Private_Dirty", 0),
        processes=1,
    )


def tree_of(pid: int) -> list[int]:
    return [pid, *descendants(pid)]


def run(config: BenchConfig) -> list[Row]:
    tree = ensure_tree(QUICK if config.quick else FULL)
    with tempfile.TemporaryDirectory(prefix="mm-bench-memory-") as tmp:
        work = Path(tmp)
        target = LocalTarget(home=work / "target").start()
        server_id = str(uuid.uuid4())
        inventory = work / "inventory.yaml"
        entry = target.server_entry(server_id, "bench", backup={"paths": [str(tree)]})
        inventory.write_text(yaml.safe_dump({"servers": [entry]}))
        stack = Stack(
            work / "stack",
            port=free_port(),
            api_port=free_port(),
            ui=False,
            inventory=inventory,
            backup_root=work / "backups",
        )
        try:
            stack.start()
            time.sleep(SETTLE)
            return _measure(stack, server_id)
        finally:
            stack.stop()
            target.stop()


def _parts(stack: Stack) -> dict[str, Child]:
    parts: dict[str, Child] = {f"server {n + 1}": c for n, c in enumerate(stack.servers)}
    parts.update({f"worker {name}": child for name, child in stack.workers.items()})
    if stack.shim is not None:
        parts["shim"] = stack.shim
    return parts


def _stack_pids(stack: Stack) -> set[int]:
    return {p for child in _parts(stack).values() if child.pid for p in tree_of(child.pid)}


def _idle(stack: Stack, samples: int = 5) -> tuple[Memory, dict[str, Memory]]:
    """The median sample (by RSS) of the whole stack, and its parts in that sample."""
    taken = []
    for _ in range(samples):
        parts = {
            name: sum((memory_of(p) for p in tree_of(child.pid)), Memory())
            for name, child in _parts(stack).items()
            if child.pid
        }
        taken.append((sum(parts.values(), Memory()), parts))
        time.sleep(1.0)
    taken.sort(key=lambda sample: sample[0].rss)
    return taken[len(taken) // 2]


class JobWatch:
    """Samples the processes that appear in the stack's trees while a job runs."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.before = _stack_pids(stack)
        self.peak = Memory()
        #: The largest RSS each new process had, by its name.
        self.largest: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self) -> JobWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()

    def describe(self) -> str:
        """Each process's largest RSS, e.g. `python 104 + ssh 8 MiB`."""
        shown = {n: rss for n, rss in self.largest.items() if rss >= MIB}
        return " + ".join(f"{n} {rss / MIB:.0f}" for n, rss in shown.items()) + " MiB"

    def _sample(self) -> None:
        while not self._stop.is_set():
            each = {p: memory_of(p) for p in _stack_pids(self.stack) - self.before}
            for pid, memory in each.items():
                name = _name(pid)
                self.largest[name] = max(self.largest.get(name, 0), memory.rss)
            now = sum(each.values(), Memory())
            if now.rss > self.peak.rss:
                self.peak = now
            self._stop.wait(0.1)


def _name(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return "?"


def _run_job(http: httpx.Client, path: str, body: dict[str, Any]) -> dict[str, Any]:
    response = http.post(path, json=body)
    response.raise_for_status()
    job_id = response.json()["data"]["jobId"]
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        job: dict[str, Any] = http.get(f"/api/jobs/{job_id}").json()["data"]
        if job["state"] in ("completed", "failed", "cancelled"):
            if job["state"] != "completed":
                raise RuntimeError(f"job {job_id} {job['state']}: {job.get('failedReason')}")
            return job
        time.sleep(0.2)
    raise TimeoutError(f"job {job_id} not final after 600 s")


def _transfer_seconds(stack: Stack, job_id: str) -> float:
    only_this = FlowRunFilter(id=FlowRunFilterId(any_=[uuid.UUID(job_id)]))
    with stack.sync_client() as client:
        for task_run in client.read_task_runs(flow_run_filter=only_this):
            if task_run.name.startswith("transfer"):
                assert task_run.start_time and task_run.end_time
                return float((task_run.end_time - task_run.start_time).total_seconds())
    raise LookupError(f"no transfer task run in job {job_id}")


def _floor() -> Memory:
    """A fresh Python with what any flow-run process imports."""
    code = "import prefect.engine, paramiko, sys; sys.stdout.write('ok'); sys.stdin.read()"
    process = subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    try:
        assert process.stdout is not None
        process.stdout.read(2)
        return memory_of(process.pid)
    finally:
        process.kill()
        process.wait()


def _measure(stack: Stack, server_id: str) -> list[Row]:
    assert stack.shim_url and stack.jwt_secret and stack.server and stack.server.pid
    total, parts = _idle(stack)
    server_alone = memory_of(stack.server.pid)
    print("  idle: " + ", ".join(f"{n} {m.rss / MIB:.0f}" for n, m in parts.items()) + " MiB")
    token = mint_token(stack.jwt_secret, "bench", "admin", ttl=timedelta(hours=1))
    headers = {"Authorization": f"Bearer {token}"}
    jobs: dict[str, tuple[JobWatch, dict[str, Any]]] = {}
    with httpx.Client(base_url=stack.shim_url, headers=headers, timeout=60) as http:
        for name, path, body in [
            ("backup", f"/api/servers/{server_id}/backup", {}),
            ("quick scan", f"/api/servers/{server_id}/scan", {"scan_type": "quick"}),
        ]:
            with JobWatch(stack) as watch:
                job = _run_job(http, path, body)
            jobs[name] = (watch, job)
            print(f"  {name}: peak {watch.peak.rss / MIB:.0f} MiB, {watch.describe()}")
    floor = _floor()
    rows = [
        Row(
            f"memory: embedded stack idle ({total.processes} processes: "
            + ", ".join(f"{n} {m.rss / MIB:.0f}" for n, m in parts.items())
            + f" MiB RSS; {total.describe()})",
            f"{total.rss / MIB:.0f} MiB RSS",
            f"{server_alone.rss / MIB:.0f} MiB the Prefect server process alone",
            f"{total.rss / server_alone.rss:.1f}x",
            "<= 1024 MiB",
            total.rss <= GOAL_STACK,
        )
    ]
    for name, (watch, _) in jobs.items():
        peak = watch.peak
        rows.append(
            Row(
                f"memory: a running {name} job's processes, peak ({watch.describe()}; "
                f"{peak.describe()}: USS is what the job adds)",
                f"{peak.rss / MIB:.0f} MiB RSS",
                f"{floor.rss / MIB:.0f} MiB a fresh python importing prefect.engine + paramiko",
                f"{peak.rss / floor.rss:.2f}x",
                "<= 100 MiB",
                peak.rss <= GOAL_JOB,
            )
        )
    backup = jobs["backup"][1]
    size = int((backup.get("result") or {}).get("size") or 0)
    seconds = _transfer_seconds(stack, backup["id"])
    rows.append(
        Row(
            "backup through the real flow (API -> worker -> `transfer archive` task run time)",
            f"{size / seconds / 1e6:.0f} MB/s",
            "see the backup rows (same tree)",
            "-",
            "reported",
            None,
        )
    )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="back up the 128 MiB tree")
    args = parser.parse_args()
    print(table(run(BenchConfig(quick=args.quick))))


if __name__ == "__main__":
    main()
