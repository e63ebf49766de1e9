"""Two signals to `make up`'s whole process group while jobs run, retry and were just retried;
then `make up` again on the same data directory: every job ends, once.

Breaks: a SIGTERM to the process group of `make up` (what `systemctl stop`, `docker stop` or a
terminal's Ctrl-C deliver: make, uv and the supervisor each get it; uv passes its own on to the
supervisor as well), then a SIGINT to the group half a second later, during the stop. At that
moment backups are transferring (through a proxy capped at 3 MB/s), a quick scan of a server
nobody listens for is between its retries, an update command is running, and a backup that
failed was retried through the API a second before. Must survive: the stop ends within its
bounds, with no process of the stack left (by the tree recorded before the signals, and by
walking /proc for any process started with this stack's data directory in its environment);
the next `make up` starts on the same directory and ports; every job ends exactly once per run
of it (no run is Running twice without an end between), with the outcome its work deserves;
one archive and one manifest per backup id, and no `.partial` left.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from prefect.client.orchestration import SyncPrefectClient
from prefect.client.schemas.objects import State, StateType

from deployments.control.queues import QUEUES_BY_NAME
from deployments.system.local_target import LocalTarget, free_port
from tasks.repository import BackupRepository, BackupStatus
from tests.support.api import Api, ok
from tests.support.processes import left_alive, process_tree
from tests.support.proxy import FaultyProxy
from tests.support.session import LOCK, InventoryFile

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

#: Each backup moves this much through the proxy at `RATE`: still transferring at the signals.
SOURCE_BYTES = 10_000_000
RATE = 1_000_000
#: From the restart until every job is final: a quick scan's retries (5 + 10 + 20 s), the
#: automations' re-runs, on two loaded cores.
RECOVERY_SECONDS = 240
#: States that end one run of a flow run.
ENDS = {StateType.COMPLETED, StateType.FAILED, StateType.CRASHED, StateType.CANCELLED}


class MakeUp:
    """`make up` in a process group of its own, as a terminal runs it."""

    def __init__(self, tmp_path: Path, inventory: Path, env: dict[str, str]) -> None:
        self.data_dir = tmp_path / "var"
        self.port, self.api_port = free_port(), free_port()
        self.inventory = inventory
        self.env = env
        self.tmp_path = tmp_path
        self.starts = 0

    def start(self) -> subprocess.Popen[bytes]:
        self.starts += 1
        self.output = self.tmp_path / f"make-up-{self.starts}.txt"
        args = (
            f"--data-dir {self.data_dir} --port {self.port} --api-port {self.api_port}"
            f" --inventory {self.inventory}"
        )
        with self.output.open("wb") as sink:
            self.process = subprocess.Popen(
                ["make", "--no-print-directory", "up", f"UP_ARGS={args}"],
                cwd=ROOT, env=self.env, stdout=sink, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        self.wait_for("Ctrl-C stops everything", timeout=300)
        return self.process

    def text(self) -> str:
        return self.output.read_text(errors="replace")

    def wait_for(self, needle: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if needle in self.text():
                return
            assert self.process.poll() is None, f"exited: {self.text()[-3000:]}"
            time.sleep(0.3)
        raise AssertionError(f"{needle!r} not printed in {timeout} s:\n{self.text()[-3000:]}")

    def signal_group(self, sig: signal.Signals) -> None:
        os.killpg(self.process.pid, sig)

    def api(self) -> Api:
        secret = (self.data_dir / "jwt-secret").read_text().strip()
        return Api(f"http://127.0.0.1:{self.api_port}", secret, "signals", role="admin")

    def client(self) -> SyncPrefectClient:
        auth = (self.data_dir / "prefect-auth").read_text().strip()
        return SyncPrefectClient(api=f"http://127.0.0.1:{self.port}/api", auth_string=auth)

    def kill(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)


def _stack_processes(data_dir: Path) -> list[int]:
    """Every process whose environment names this stack's data directory (MM_BACKUP_ROOT and
    Prefect's home are below it): whatever its parent now is."""
    needle = str(data_dir).encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        if needle in environ:
            found.append(int(entry.name))
    return found


def _history(states: list[State]) -> str:
    ordered = sorted(states, key=lambda s: s.timestamp)
    return "; ".join(f"{s.timestamp:%T.%f} {s.name}: {(s.message or '')[:80]}" for s in ordered)


def _runs_without_end(states: list[State]) -> int:
    """How many times a Running follows a Running with no end between: one run began while
    another was still going, as far as Prefect was told."""
    overlaps = 0
    running = False
    for state in sorted(states, key=lambda s: s.timestamp):
        if state.type is StateType.RUNNING:
            overlaps += running
            running = True
        elif state.type in ENDS:
            running = False
    return overlaps


def test_two_signals_to_make_ups_group_mid_run_then_make_up_again_ends_every_job_once(
    tmp_path: Path, target: LocalTarget
) -> None:
    proxy = FaultyProxy(target.port, bytes_per_second=RATE).start()
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text(target.known_hosts_line(proxy.port))
    source = tmp_path / "source"
    source.mkdir()
    (source / "big.bin").write_bytes(os.urandom(SOURCE_BYTES))
    late = tmp_path / "late"  # the retried backup's path: missing until its retry
    inventory = InventoryFile(tmp_path / "inventory.yaml")
    slow = {"port": proxy.port, "known_hosts_file": str(known_hosts)}
    backups = [
        inventory.add_server(target, backup={"paths": [str(source)]}, **slow) for _ in range(2)
    ]
    retried = inventory.add_server(target, backup={"paths": [str(late)]}, **slow)
    scanned = inventory.add_server(target)
    nobody = inventory.add_server(target, port=free_port())  # nothing listens there
    updated = inventory.add_server(target, update={"command": "sleep 30"})
    env = {
        **os.environ,
        "COLUMNS": "200",
        "DO_NOT_TRACK": "1",
        "MM_LOCK_DURATIONS": json.dumps(dict.fromkeys(QUEUES_BY_NAME, LOCK)),
        "MM_MAINTENANCE_CRON": "",
        "MM_CHECK_CRON": "",
        "MM_BACKUP_ROOT": str(tmp_path / "var" / "backups"),
        "MM_RESULTS_ROOT": str(tmp_path / "var" / "results"),
    }
    stack = MakeUp(tmp_path, inventory.path, env)
    try:
        stack.start()
        with stack.api() as api:
            failed = ok(api.post(f"/api/servers/{retried}/backup", json={}), 202)
            api.wait_for_state(failed["jobId"], "failed", timeout=120)
            jobs: dict[str, dict[str, Any]] = {"retried backup": failed}
            for n, server in enumerate(backups):
                jobs[f"backup {n}"] = ok(api.post(f"/api/servers/{server}/backup", json={}), 202)
            jobs["full scan"] = ok(
                api.post(f"/api/servers/{scanned}/scan", json={"scan_type": "full"}), 202
            )
            jobs["retrying quick scan"] = ok(
                api.post(f"/api/servers/{nobody}/scan", json={"scan_type": "quick"}), 202
            )
            jobs["update"] = ok(api.post(f"/api/servers/{updated}/update", json={}), 202)
            for name in ("backup 0", "backup 1", "update"):
                api.wait_for_state(jobs[name]["jobId"], "active", timeout=120)
            # Between its tries: the first attempt has failed, the flow waits out 5 s.
            api.wait_for(
                jobs["retrying quick scan"]["jobId"], lambda job: job["attempts"] >= 2, timeout=60
            )
            late.mkdir()
            (late / "notes.txt").write_text("written after the first try\n")
            ok(api.post(f"/api/jobs/{failed['jobId']}/retry"))
            time.sleep(1.0)
            states = {name: api.job(job["jobId"])["state"] for name, job in jobs.items()}
        # Still transferring when the signals come (else this test breaks nothing of theirs).
        assert states["backup 0"] == states["backup 1"] == "active", states
        tree = process_tree(stack.process.pid)
        assert len(tree) >= 8, tree  # make, uv, supervisor, server, 3 workers, shim, runs

        stack.signal_group(signal.SIGTERM)
        time.sleep(0.5)
        stack.signal_group(signal.SIGINT)  # during the stop: it hurries, never skips a step
        stack.process.wait(60)
        first = stack.text()
        assert "stopped in" in first, first[-3000:]
        assert not left_alive(tree, within=5), (left_alive(tree, 0), first[-3000:])
        assert not _stack_processes(stack.data_dir), first[-3000:]

        stack.start()
        ids = {name: uuid.UUID(job["jobId"]) for name, job in jobs.items()}
        deadline = time.monotonic() + RECOVERY_SECONDS
        with stack.client() as client:
            while True:
                runs = {name: client.read_flow_run(i) for name, i in ids.items()}
                done = all(r.state is not None and r.state.is_final() for r in runs.values())
                crashed = any(r.state_type is StateType.CRASHED for r in runs.values())
                if (done and not crashed) or time.monotonic() > deadline:
                    break
                time.sleep(1.0)
            histories = {name: client.read_flow_run_states(i) for name, i in ids.items()}
            every_run = client.read_flow_runs(limit=200)
        report = "\n".join(
            f"{name:20} {runs[name].state_name:10} runs={runs[name].run_count} "
            f"{_history(histories[name])}"
            for name in ids
        )
        print(report)

        for name, history in histories.items():
            assert not _runs_without_end(history), f"{name} ran twice at once:\n{report}"
            # Handed back by the stop itself (its worker reported the kill), not found dead
            # by the stalled-run automation a lock duration after the restart.
            stalled = [s for s in history if (s.message or "").startswith("Stalled")]
            assert not stalled, f"{name} was left Running by the stop:\n{report}"
            # One end per run of the flow run: a re-run after the stop, or the API's retry,
            # is a run of its own; a second end of one run would be a job that ran twice.
            ends = sum(s.type in ENDS for s in history)
            assert ends == runs[name].run_count, f"{name}: {ends} ends:\n{report}"
        # No run appeared that nobody asked for (the database is this test's alone).
        assert sorted(r.id for r in every_run) == sorted(ids.values()), report

        def state(name: str) -> StateType | None:
            return runs[name].state_type

        for name in ("backup 0", "backup 1", "retried backup", "full scan"):
            assert state(name) is StateType.COMPLETED, f"{name}:\n{report}"
        # Nobody listens on its port: it fails after its attempts, once.
        assert state("retrying quick scan") is StateType.FAILED, report
        # Done before the stop, or handed back with its command running: then its re-run
        # refuses to send it again (it may have done its work), and says so.
        update = runs["update"]
        assert update.state_type is StateType.COMPLETED or (
            update.state_type is StateType.FAILED
            and "it is not run again" in (update.state.message or "" if update.state else "")
        ), report

        repo = BackupRepository(tmp_path / "var" / "backups")
        backed_up = {"backup 0": backups[0], "backup 1": backups[1], "retried backup": retried}
        for name, server in backed_up.items():
            backup_id = uuid.UUID(jobs[name]["backupId"])
            manifest = repo.read(server, backup_id)
            assert manifest is not None and manifest.status is BackupStatus.COMPLETED, name
            assert repo.verify(manifest).sha256 == manifest.sha256, name
            assert {p.name for p in repo.server_dir(server).iterdir()} == {
                f"{backup_id}.json",
                manifest.archive,
                repo.listing_path(manifest).name,
            }, name

        stack.signal_group(signal.SIGTERM)
        stack.process.wait(60)
        assert "stopped in" in stack.text(), stack.text()[-3000:]
    finally:
        stack.kill()
        proxy.close()
