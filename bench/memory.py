"""Issue 21's goal 2: memory (PSS) of the embedded stack idle, of each job, and under load.

    uv run python -m bench.memory [--quick]

Starts the whole embedded stack (`deployments.system.stack.Stack`: Prefect server, a worker per
pool, the API shim) with an sshd on loopback in its inventory, lets it settle, then sums the
memory of every process of the stack's process trees, from /proc/<pid>/smaps_rollup (no
psutil). A job's memory is its PSS: shared pages split among their sharers, so a forked run is
charged its share of the pages it shares with its fork server, not all of them (RSS) nor none
of them (USS); RSS and USS are shown beside it. Then, through the shim:

- one backup of the cached tree (`bench.tree`) and one quick scan, each alone: every process
  that appears in the stack's trees during a job is that job's (its run process, its ssh and
  tar), sampled every 0.1 s; the figure is the largest sum;
- 2 backups (two inventory servers on the same sshd, since backups and updates of one server
  take turns, `tasks.server_slot`), 5 full scans and 1 update (its command `sleep 5`, so that
  it runs beside the others) posted together: the whole stack's PSS, its processes and the
  jobs', sampled every 0.2 s while they run; the figure is the largest sum, with the most runs
  Running at once from Prefect's state history.

Goals: stack idle <= 600 MiB PSS, each job <= 100 MiB PSS, the loaded stack <= 1.2 GiB PSS.
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
from deployments.control.queues import QUEUES_BY_NAME
from deployments.system.local_target import LocalTarget, descendants, free_port
from deployments.system.stack import Child, Stack
from tasks.core.callers import mint_token
from tests.support.runs import max_overlap, running_interval

MIB = 1 << 20
#: Issue 21's goals, in PSS.
GOAL_STACK = 600 * MIB
GOAL_JOB = 100 * MIB
GOAL_LOADED = int(1.2 * (1 << 30))
#: The loaded figure's jobs: issue 21's 2 backups, 5 scans and 1 update, every pool full.
LOADED = {name: queue.concurrency for name, queue in QUEUES_BY_NAME.items()}
#: The update's command: long enough to run beside the backups and scans.
UPDATE_COMMAND = "sleep 5"
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
        return f"RSS {self.rss / MIB:.0f} MiB, USS {self.uss / MIB:.0f} MiB"


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
        # Backups and updates of one server take turns: one server per backup and update
        # running at once, all of them the same sshd.
        servers = {
            f"{pool}-{n}": str(uuid.uuid4())
            for pool in ("backup", "update")
            for n in range(LOADED[pool])
        }
        entries = [
            target.server_entry(server_id, name, backup={"paths": [str(tree)]})
            if name.startswith("backup")
            else target.server_entry(server_id, name, update={"command": UPDATE_COMMAND})
            for name, server_id in servers.items()
        ]
        inventory = work / "inventory.yaml"
        inventory.write_text(yaml.safe_dump({"servers": entries}))
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
            return _measure(stack, servers)
        finally:
            stack.stop()
            target.stop()


def _parts(stack: Stack) -> dict[str, Child]:
    parts: dict[str, Child] = {f"server {n + 1}": c for n, c in enumerate(stack.servers)}
    parts.update({f"worker {', '.join(c.pools)}": c for c in stack.worker_processes()})
    if stack.shim is not None:
        parts["shim"] = stack.shim
    return parts


def _stack_pids(stack: Stack) -> set[int]:
    return {p for child in _parts(stack).values() if child.pid for p in tree_of(child.pid)}


def _idle(stack: Stack, samples: int = 5) -> tuple[Memory, dict[str, Memory]]:
    """The median sample (by PSS) of the whole stack, and its parts in that sample."""
    taken = []
    for _ in range(samples):
        parts = {
            name: sum((memory_of(p) for p in tree_of(child.pid)), Memory())
            for name, child in _parts(stack).items()
            if child.pid
        }
        taken.append((sum(parts.values(), Memory()), parts))
        time.sleep(1.0)
    taken.sort(key=lambda sample: sample[0].pss)
    return taken[len(taken) // 2]


class JobWatch:
    """Samples the processes that appear in the stack's trees while jobs run (`whole_stack`:
    every process of the trees, the stack's own too); keeps the sample of largest PSS."""

    def __init__(self, stack: Stack, *, whole_stack: bool = False, every: float = 0.1) -> None:
        self.stack = stack
        self.before = set() if whole_stack else _stack_pids(stack)
        self.every = every
        self.peak = Memory()
        #: The largest PSS each new process had, by its name.
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
        """Each process's largest PSS, e.g. `python 64 + ssh 3 MiB`."""
        shown = {n: pss for n, pss in self.largest.items() if pss >= MIB}
        return " + ".join(f"{n} {pss / MIB:.0f}" for n, pss in shown.items()) + " MiB PSS"

    def _sample(self) -> None:
        while not self._stop.is_set():
            each = {p: memory_of(p) for p in _stack_pids(self.stack) - self.before}
            for pid, memory in each.items():
                name = _name(pid)
                self.largest[name] = max(self.largest.get(name, 0), memory.pss)
            now = sum(each.values(), Memory())
            if now.pss > self.peak.pss:
                self.peak = now
            self._stop.wait(self.every)


def _name(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return "?"


def _post_job(http: httpx.Client, path: str, body: dict[str, Any]) -> str:
    response = http.post(path, json=body)
    response.raise_for_status()
    return str(response.json()["data"]["jobId"])


def _wait_job(http: httpx.Client, job_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        job: dict[str, Any] = http.get(f"/api/jobs/{job_id}").json()["data"]
        if job["state"] in ("completed", "failed", "cancelled"):
            if job["state"] != "completed":
                raise RuntimeError(f"job {job_id} {job['state']}: {job.get('failedReason')}")
            return job
        time.sleep(0.2)
    raise TimeoutError(f"job {job_id} not final after 600 s")


def _loaded(stack: Stack, http: httpx.Client, servers: dict[str, str]) -> tuple[JobWatch, int]:
    """Every pool full at once (`LOADED`), the whole stack watched; the most runs Running at
    once, from the state history."""
    backups = [servers[f"backup-{n}"] for n in range(LOADED["backup"])]
    posts: list[tuple[str, dict[str, Any]]] = [(f"/api/servers/{s}/backup", {}) for s in backups]
    posts += [(f"/api/servers/{backups[0]}/scan", {"scan_type": "full"})] * LOADED["scan"]
    posts += [
        (f"/api/servers/{servers[f'update-{n}']}/update", {}) for n in range(LOADED["update"])
    ]
    with JobWatch(stack, whole_stack=True, every=0.2) as watch:
        ids = [_post_job(http, path, body) for path, body in posts]
        for job_id in ids:
            _wait_job(http, job_id)
    with stack.sync_client() as client:
        intervals = [running_interval(client.read_flow_run_states(uuid.UUID(i))) for i in ids]
    return watch, max_overlap(intervals)


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


def _measure(stack: Stack, servers: dict[str, str]) -> list[Row]:
    assert stack.shim_url and stack.jwt_secret and stack.server and stack.server.pid
    total, parts = _idle(stack)
    server_alone = memory_of(stack.server.pid)
    print("  idle: " + ", ".join(f"{n} {m.pss / MIB:.0f}" for n, m in parts.items()) + " MiB PSS")
    token = mint_token(stack.jwt_secret, "bench", "admin", ttl=timedelta(hours=1))
    headers = {"Authorization": f"Bearer {token}"}
    server_id = servers["backup-0"]
    jobs: dict[str, tuple[JobWatch, dict[str, Any]]] = {}
    with httpx.Client(base_url=stack.shim_url, headers=headers, timeout=60) as http:
        for name, path, body in [
            ("backup", f"/api/servers/{server_id}/backup", {}),
            ("quick scan", f"/api/servers/{server_id}/scan", {"scan_type": "quick"}),
        ]:
            with JobWatch(stack) as watch:
                job = _wait_job(http, _post_job(http, path, body))
            jobs[name] = (watch, job)
            print(f"  {name}: peak {watch.peak.pss / MIB:.0f} MiB PSS, {watch.describe()}")
        loaded, most_running = _loaded(stack, http, servers)
    print(f"  loaded: peak {loaded.peak.pss / MIB:.0f} MiB PSS, {most_running} running at once")
    floor = _floor()
    rows = [
        Row(
            f"memory: embedded stack idle ({total.processes} processes: "
            + ", ".join(f"{n} {m.pss / MIB:.0f}" for n, m in parts.items())
            + f" MiB PSS; {total.describe()})",
            f"{total.pss / MIB:.0f} MiB PSS",
            f"{server_alone.pss / MIB:.0f} MiB PSS the Prefect server process alone",
            f"{total.pss / server_alone.pss:.1f}x",
            f"<= {GOAL_STACK // MIB} MiB PSS",
            total.pss <= GOAL_STACK,
        )
    ]
    for name, (watch, _) in jobs.items():
        peak = watch.peak
        rows.append(
            Row(
                f"memory: a running {name} job's processes, peak ({watch.describe()}; "
                f"{peak.describe()}: USS is what the job adds)",
                f"{peak.pss / MIB:.0f} MiB PSS",
                f"{floor.pss / MIB:.0f} MiB PSS a fresh python importing prefect.engine + paramiko",
                f"{peak.pss / floor.pss:.2f}x",
                f"<= {GOAL_JOB // MIB} MiB PSS",
                peak.pss <= GOAL_JOB,
            )
        )
    peak = loaded.peak
    jobs_posted = " + ".join(f"{n} {pool}" for pool, n in LOADED.items())
    rows.append(
        Row(
            f"memory: the stack with {jobs_posted} jobs posted together, peak of the whole"
            f" stack ({peak.processes} processes; {most_running} runs Running at once at most;"
            f" {peak.describe()})",
            f"{peak.pss / MIB:.0f} MiB PSS",
            f"{total.pss / MIB:.0f} MiB PSS the same stack idle (as above)",
            f"{peak.pss / total.pss:.2f}x",
            f"<= {GOAL_LOADED / (1 << 30):.1f} GiB PSS",
            peak.pss <= GOAL_LOADED,
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
