"""kill -9 the whole system mid-run, start it again: every job ends, once.

Breaks: 20 mixed jobs (backups, full and quick scans, updates) are enqueued through the API
shim; while several of them run, the Prefect server, every worker with its fork server and its
flow-run processes, and the shim are all killed with SIGKILL at once, as a power cut would.
Then the same data directory (SQLite database, repositories) is started again on the same
ports. Must survive: all 20 jobs end Completed, but an update whose command was running at the
kill, which ends Failed saying it is not run again (it may have done its work: tasks/update.py);
no job is duplicated (still 20 flow runs, each final once), each wrote its one record (one
archive and one manifest per backup id, one scan record per scan id, one update record per
update id), every archive matches its
manifest's size and sha256 and lists with tar, and no temp (`.partial`) archive is left.

The runs killed while Running or Pending have no process left, which the restarted embedded
stack knows: it crashes them before its workers start (`crash_orphaned_runs`), and the re-run
automation runs them again, same id, at once, instead of a lock duration later when the
stalled-run automation would find them (`deployments.control.automations`). This test runs a
stack of its own: the session's would lose its runs, and its other tests' too.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
from prefect.client.schemas.objects import FlowRun, State, StateType

from deployments.control.automations import ORPHANED_MESSAGE
from deployments.control.queues import QUEUES_BY_NAME
from deployments.system.local_target import LocalTarget, free_port
from deployments.system.stack import Stack
from tasks.core.settings import BackendSettings
from tasks.repository import BackupRepository, BackupStatus
from tests.integration.conftest import LOCK, InventoryFile
from tests.support.api import Api, ok
from tests.support.proxy import FaultyProxy

pytestmark = [pytest.mark.slow, pytest.mark.timeout(420)]

#: Each backup moves 8 MB through a proxy at 3 MB/s: still transferring when the kill comes.
SOURCE_BYTES = 8_000_000
RATE = 3_000_000
#: How many of the 20 jobs must be Running when everything is killed.
RUNNING_AT_KILL = 4
#: From the restart until every job is final: the re-runs on two loaded cores.
RECOVERY_SECONDS = 150


@dataclass(frozen=True)
class Job:
    """One enqueued job: its flow run, its kind and the id of the record it writes."""

    job_id: UUID
    kind: str  # backup, scan:full, scan:quick or update
    server_id: UUID
    record_id: UUID


@dataclass
class World:
    """The stack's fixed parts, kept over the restart: directories, ports, inventory, target."""

    data_dir: Path
    port: int
    api_port: int
    jwt_secret: str
    inventory: InventoryFile
    target: LocalTarget
    proxy: FaultyProxy
    source: Path
    known_hosts: Path

    def stack(self) -> Stack:
        """A Stack on this world's data directory and ports (a fresh object each time)."""
        return Stack(
            self.data_dir,
            port=self.port,
            inventory=self.inventory.path,
            backup_root=self.data_dir / "backups",
            results_root=self.data_dir / "results",
            api_port=self.api_port,
            ui=False,
            jwt_secret=self.jwt_secret,
            backend=BackendSettings(database_url=None, redis_url=None),
            extra_env={
                "MM_LOCK_DURATIONS": json.dumps(dict.fromkeys(QUEUES_BY_NAME, LOCK)),
                # No maintenance or check runs: they would be runs of the scan pool this test
                # does not count, and the scheduler could add them mid-test.
                "MM_MAINTENANCE_CRON": "",
                "MM_CHECK_CRON": "",
            },
        )


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    target = LocalTarget(home=tmp_path / "target").start()
    proxy = FaultyProxy(target.port, bytes_per_second=RATE).start()
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text(target.known_hosts_line(proxy.port))
    source = tmp_path / "source"
    source.mkdir()
    (source / "big.bin").write_bytes(os.urandom(SOURCE_BYTES))
    (source / "small.txt").write_text("answer = 42\n" * 100)
    try:
        yield World(
            data_dir=tmp_path / "stack",
            port=free_port(),
            api_port=free_port(),
            jwt_secret=uuid.uuid4().hex,
            inventory=InventoryFile(tmp_path / "inventory.yaml"),
            target=target,
            proxy=proxy,
            source=source,
            known_hosts=known_hosts,
        )
    finally:
        proxy.close()
        target.stop()


def kill_everything(stack: Stack) -> list[str]:
    """SIGKILL every process group of the stack in one go; returns what was killed.

    The flow runs' groups are collected first (they are found below their workers), then all
    groups get SIGKILL before any is waited for: nothing gets to notice another one's death.
    """
    workers = stack.worker_processes()
    children = [*workers, *([stack.shim] if stack.shim else []), *stack.servers]
    runs = [group for worker in workers for group in worker.flow_run_groups()]
    groups = runs + [child.pid for child in children if child.alive() and child.pid is not None]
    for group in groups:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(group, signal.SIGKILL)
    for child in children:
        child.reap()
    return [f"{len(runs)} flow-run processes"] + [child.name for child in children]


def enqueue(api: Api, world: World) -> list[Job]:
    """20 jobs through the shim: 6 backups, 5 full scans, 6 quick scans, 3 updates, mixed."""
    backup_servers = [
        world.inventory.add_server(
            world.target,
            port=world.proxy.port,
            known_hosts_file=str(world.known_hosts),
            backup={"paths": [str(world.source)]},
            owners=[api.user_id],
        )
        for _ in range(3)
    ]
    scan_servers = [
        world.inventory.add_server(world.target, owners=[api.user_id]) for _ in range(3)
    ]
    # Long enough to be running at the kill; its re-run then refuses to send it again.
    update_server = world.inventory.add_server(
        world.target, update={"command": "sleep 4"}, owners=[api.user_id]
    )
    kinds = ["backup"] * 6 + ["scan:full"] * 5 + ["scan:quick"] * 6 + ["update"] * 3
    random.Random(4).shuffle(kinds)  # As users would send them: kinds mixed, the same each run.
    jobs = []
    body: dict[str, str]
    for n, kind in enumerate(kinds):
        if kind == "backup":
            server, path, body, id_key = backup_servers[n % 3], "backup", {}, "backupId"
        elif kind == "update":
            server, path, body, id_key = update_server, "update", {}, "updateId"
        else:
            server, path, id_key = scan_servers[n % 3], "scan", "scanId"
            body = {"scan_type": kind.split(":")[1]}
        data = ok(api.post(f"/api/servers/{server}/{path}", json=body), 202)
        jobs.append(Job(UUID(data["jobId"]), kind, server, UUID(data[id_key])))
    return jobs


def wait_until_running(stack: Stack, jobs: list[Job], count: int, timeout: float = 120) -> int:
    """Until at least `count` of the jobs are Running (and at least one backup is)."""
    ids = {job.job_id for job in jobs if job.kind == "backup"}
    deadline = time.monotonic() + timeout
    with stack.sync_client() as client:
        while True:
            runs = [client.read_flow_run(job.job_id) for job in jobs]
            running = [r for r in runs if r.state is not None and r.state.is_running()]
            if len(running) >= count and any(r.id in ids for r in running):
                return len(running)
            if time.monotonic() > deadline:
                states = Counter(r.state.name if r.state else None for r in runs)
                pytest.fail(f"never {count} jobs Running at once: {dict(states)}", pytrace=False)
            time.sleep(0.2)


def wait_until_settled(stack: Stack, jobs: list[Job], timeout: float) -> list[FlowRun]:
    """Until every job is Completed, Failed or Cancelled (Crashed runs are run again)."""
    done = {StateType.COMPLETED, StateType.FAILED, StateType.CANCELLED}
    deadline = time.monotonic() + timeout
    with stack.sync_client() as client:
        while True:
            runs = [client.read_flow_run(job.job_id) for job in jobs]
            if all(r.state is not None and r.state.type in done for r in runs):
                return runs
            if time.monotonic() > deadline:
                return runs
            time.sleep(1.0)


def history(states: list[State]) -> str:
    ordered = sorted(states, key=lambda s: s.timestamp)
    return "; ".join(f"{s.timestamp:%T} {s.name}: {(s.message or '')[:90]}" for s in ordered)


def test_kill_9_of_everything_mid_run_then_restart_completes_every_job_once(
    world: World,
) -> None:
    stack = world.stack()
    restarted: Stack | None = None
    try:
        stack.start()
        with Api(f"http://127.0.0.1:{world.api_port}", world.jwt_secret, "restart-test") as api:
            jobs = enqueue(api, world)
        running = wait_until_running(stack, jobs, RUNNING_AT_KILL)
        with stack.sync_client() as client:
            states_at_kill = {
                job.job_id: client.read_flow_run(job.job_id).state_name for job in jobs
            }
        at_kill = Counter(f"{job.kind}:{states_at_kill[job.job_id]}" for job in jobs)
        killed = kill_everything(stack)
        killed_at = time.monotonic()
        print(f"\nkilled {', '.join(killed)} with {running} jobs Running: {dict(at_kill)}")

        restarted = world.stack()
        restarted.start()
        print(f"restarted in {time.monotonic() - killed_at:.0f} s: {restarted.timings}")
        runs = wait_until_settled(restarted, jobs, RECOVERY_SECONDS)
        print(f"settled {time.monotonic() - killed_at:.0f} s after the kill")
        with restarted.sync_client() as client:
            histories = {job.job_id: client.read_flow_run_states(job.job_id) for job in jobs}
            # The database is this test's alone, without schedules: its runs are the 20 jobs.
            all_runs = client.read_flow_runs(limit=200)
        report = "\n".join(
            f"{job.kind:10} {job.job_id} {run.state_name:10} runs={run.run_count} "
            f"{history(histories[job.job_id])}"
            for job, run in zip(jobs, runs, strict=True)
        )
        print(report)

        # Updates whose command ran at the kill refuse to run it again, and say so.
        refused = {
            job.job_id
            for job in jobs
            if job.kind == "update" and update_outcome_unknown(world, job)
        }
        assert refused <= {j for j, state in states_at_kill.items() if state == "Running"}, report
        for job, run in zip(jobs, runs, strict=True):
            assert run.state is not None, report
            if job.job_id in refused:
                assert run.state.is_failed(), report
                assert "it is not run again" in (run.state.message or ""), report
            else:
                assert run.state.is_completed(), report
        # Each final exactly once, and no other run appeared.
        final = {StateType.COMPLETED, StateType.FAILED}
        endings = {job.job_id: sum(s.type in final for s in histories[job.job_id]) for job in jobs}
        assert set(endings.values()) == {1}, (endings, report)
        assert sorted(r.id for r in all_runs) == sorted(j.job_id for j in jobs), report
        # Crashed by the restart itself, not found by the stalled-run automation much later.
        crashes = [s.message for h in histories.values() for s in h if s.type is StateType.CRASHED]
        assert crashes and set(crashes) == {ORPHANED_MESSAGE}, report
        rerun = [run for run in runs if run.run_count > 1]
        print(f"{len(rerun)} jobs ran again after the kill")

        check_records(world, jobs, refused)
        # And the restarted shim tells the same story.
        with Api(f"http://127.0.0.1:{world.api_port}", world.jwt_secret, "restart-test") as api:
            states = Counter(api.job(str(job.job_id))["state"] for job in jobs)
        expected = Counter({"completed": len(jobs) - len(refused), "failed": len(refused)})
        assert states == +expected, states
    finally:
        if restarted is not None:
            restarted.stop()
        stack.stop()


def update_outcome_unknown(world: World, job: Job) -> bool:
    """Whether the update's record says its command started and no try saw it end."""
    path = world.data_dir / "results" / "updates" / str(job.server_id) / f"{job.record_id}.json"
    record = json.loads(path.read_text()) if path.exists() else {}
    return record.get("commandStartedAt") is not None and record.get("exitStatus") is None


def check_records(world: World, jobs: list[Job], refused: set[UUID]) -> None:
    """One verified archive + manifest per backup, one record per scan and update, no leftovers;
    the `refused` updates' records say failed."""
    repo = BackupRepository(world.data_dir / "backups")
    results = world.data_dir / "results"
    expected: dict[Path, set[str]] = {}
    for job in jobs:
        if job.kind == "backup":
            manifest = repo.read(job.server_id, job.record_id)
            assert manifest is not None, f"no manifest of backup {job.record_id}"
            assert manifest.status is BackupStatus.COMPLETED, manifest
            assert manifest.job_id == job.job_id, manifest
            verified = repo.verify(manifest)
            assert verified.sha256 == manifest.sha256 and verified.file_count == 2, verified
            names = {f"{job.record_id}.json", manifest.archive, repo.listing_path(manifest).name}
            expected.setdefault(repo.server_dir(job.server_id), set()).update(names)
            continue
        kind = "updates" if job.kind == "update" else "scans"
        record_path = results / kind / str(job.server_id) / f"{job.record_id}.json"
        record: dict[str, Any] = json.loads(record_path.read_text())
        assert record["status"] == ("failed" if job.job_id in refused else "completed"), record
        assert record["jobId"] == str(job.job_id), record
        names = {record_path.name}
        if job.kind == "update" and job.job_id not in refused:  # a refused one has no log
            names.add(f"{job.record_id}.log")
        expected.setdefault(record_path.parent, set()).update(names)
    # Exactly those files: no second archive, no `.partial`, no record of a job nobody asked for.
    for directory, names in expected.items():
        assert {p.name for p in directory.iterdir()} == names, directory
    backups = world.data_dir / "backups"
    assert set(backups.iterdir()) == {d for d in expected if d.parent == backups}
