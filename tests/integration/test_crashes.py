"""Crashed and stalled jobs: noticed within the lock duration, run again, completed once.

The session's stack has heartbeats every 30 s and a lock duration of `LOCK` s per queue, so the
bootstrap's automations (`deployments.control.automations`) crash a silent run after `LOCK` s and
schedule a crashed run again, same id.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from uuid import UUID

import pytest
from prefect.client.schemas.actions import WorkPoolUpdate
from prefect.client.schemas.objects import FlowRun, State, StateType

from deployments.control.automations import gave_up_message, refind_crashed_runs, rerun_name
from deployments.control.queues import get_queue
from deployments.system.local_target import LocalTarget, descendants
from deployments.system.stack import Stack
from deployments.worker.lifeline import is_alive, start_time
from tasks.archive_files import restore
from tasks.core.settings import SupervisionSettings
from tasks.repository import BackupRepository, BackupStatus
from tests.integration.conftest import LOCK
from tests.support.proxy import FaultyProxy
from tests.support.runs import max_overlap, running_interval
from tests.support.trees import restored, tree_digest

SOURCE_BYTES = 12_000_000
#: Slow enough that a backup is still transferring when its process is killed (~4 s a backup).
RATE = 3_000_000
#: The proactive trigger is evaluated every few seconds, and events arrive in batches.
EVALUATION_SLACK = 15


@pytest.fixture
def slow_server(stack, inventory, tmp_path: Path):
    """A server behind a throttling proxy, with a 12 MB source: (server_id, source)."""
    target = LocalTarget(home=tmp_path / "slow").start()
    proxy = FaultyProxy(target.port, bytes_per_second=RATE).start()
    (tmp_path / "known_hosts").write_text(target.known_hosts_line(proxy.port))
    source = tmp_path / "source"
    source.mkdir()
    (source / "big.bin").write_bytes(os.urandom(SOURCE_BYTES))
    server_id = inventory.add_server(
        target,
        port=proxy.port,
        known_hosts_file=str(tmp_path / "known_hosts"),
        backup={"paths": [str(source)]},
    )
    yield server_id, source
    proxy.close()
    target.kill()


def flow_run_pid(stack: Stack, pool: str, run_id: UUID, timeout: float = 60) -> int:
    """The pid of the process that runs `run_id`: the worker records it on the flow run.

    Checked against the pool worker's process tree, so a wrong pid cannot pass unnoticed.
    """
    worker = stack.workers[pool]
    assert worker.pid is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with stack.sync_client() as client:
            recorded = client.read_flow_run(run_id).infrastructure_pid
        if recorded:
            pid = int(recorded.rsplit(":", 1)[-1])
            assert pid in descendants(worker.pid), f"{pid} is not below the {pool} worker"
            return pid
        time.sleep(0.2)
    pytest.fail(f"no process of flow run {run_id} below the {pool} worker")


def wait_for_partial(repo: BackupRepository, server_id: UUID, backup_id: UUID) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        for partial in repo.server_dir(server_id).glob(f".{backup_id}.*.partial"):
            if partial.stat().st_size >= RATE:
                return
        time.sleep(0.1)
    pytest.fail(f"backup {backup_id} never started transferring")


def wait_until_completed(stack: Stack, run_id: UUID, timeout: float) -> tuple[FlowRun, list[State]]:
    """Poll until the run is Completed (a Crashed run is not done yet: it runs again)."""
    deadline = time.monotonic() + timeout
    with stack.sync_client() as client:
        while True:
            run = client.read_flow_run(run_id)
            if (run.state is not None and run.state.is_completed()) or time.monotonic() > deadline:
                states = sorted(client.read_flow_run_states(run_id), key=lambda s: s.timestamp)
                break
            time.sleep(0.5)
    history = [(s.name, s.timestamp.isoformat(), (s.message or "")[:80]) for s in states]
    assert run.state is not None and run.state.is_completed(), history
    return run, states


@pytest.mark.parametrize("worker_dies", [False, True], ids=["run-killed", "worker-and-run-killed"])
def test_killed_backup_is_crashed_rerun_and_completed_once(
    stack, target, inventory, run_job, wait_for_final_state, slow_server, tmp_path, worker_dies
):
    """kill -9 a backup's flow-run process (and, the second time, its worker too) mid-transfer.

    Breaks: the run's process; with `worker_dies` also the worker, so nobody reports the run and
    only the missing heartbeats tell (the stalled-run automation, within the lock duration).
    Must survive: the run is marked Crashed within the lock duration, is run again with the same
    id by the re-run automation, completes once, leaves one archive and one manifest that
    verify and restore; its pool slot is free again (the pool then runs 2 backups at once).
    """
    server_id, source = slow_server
    repo = BackupRepository(stack.backup_root)
    backup_id = uuid.uuid4()
    run_id = run_job("backup/backup", {"server_id": str(server_id), "backup_id": str(backup_id)})
    wait_for_partial(repo, server_id, backup_id)
    pid = flow_run_pid(stack, "backup", run_id)
    # The run's own children: the fast path's ssh, whose stdout is the archive file, would go
    # on writing it after the run (tasks/lifeline.py ties it to the run).
    children = {child: start_time(child) for child in descendants(pid)}
    assert children, f"run {pid} has no ssh child mid-transfer"
    if worker_dies:
        stack.kill_worker("backup")
    killed_at = datetime.now(UTC)
    # A fork-server worker's run dies with it (deployments/worker/lifeline.py), maybe already.
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    # At once: the transfer itself would end within seconds anyway.
    deadline = time.monotonic() + 1.5
    while any(is_alive(c, started) for c, started in children.items()):
        assert time.monotonic() < deadline, f"the run's children outlived it: {children}"
        time.sleep(0.1)
    if worker_dies:
        stack.start_worker("backup")

    run, states = wait_until_completed(stack, run_id, timeout=LOCK + EVALUATION_SLACK + 90)
    crashes = [s for s in states if s.type is StateType.CRASHED]
    history = "\n".join(f"{s.timestamp:%T.%f} {s.name}: {s.message}" for s in states)
    # The worker reports a killed process twice (its runner, then itself after the crash
    # hooks); the second report may land on the already re-scheduled run, which is harmless:
    # attempts count runs (`run_count`), not reports.
    assert crashes, history
    latency = (crashes[0].timestamp - killed_at).total_seconds()
    limit = LOCK + EVALUATION_SLACK if worker_dies else 10
    assert latency <= limit, f"crash noticed after {latency:.1f} s, limit {limit} s"
    if worker_dies:
        assert "no heartbeat" in (crashes[0].message or ""), crashes[0].message
    assert run.run_count == 2, history  # killed once, completed once
    print(f"crash of the run noticed after {latency:.1f} s (worker_dies={worker_dies})")

    manifest = repo.read(server_id, backup_id)
    assert manifest is not None and manifest.status is BackupStatus.COMPLETED
    assert sorted(p.name for p in repo.server_dir(server_id).iterdir()) == [
        f"{backup_id}.files.jsonl",
        f"{backup_id}.json",
        f"{backup_id}.tar",
    ]
    repo.verify(manifest)
    restore(repo, manifest, tmp_path / "restore")
    assert tree_digest(restored(tmp_path / "restore", source)) == tree_digest(source)

    if not worker_dies:
        return  # the worker that saw its process die freed the slot itself
    # The stalled run holds no slot: the limit-2 pool runs two backups at once again (of two
    # servers: one server's backups take turns).
    servers = [
        inventory.add_server(target, backup={"paths": [str(source)], "pre": "sleep 2"})
        for _ in range(2)
    ]
    pair = [run_job("backup/backup", {"server_id": str(s)}) for s in servers]
    finished = [wait_for_final_state(r, timeout=90) for r in pair]
    assert all(r.state is not None and r.state.is_completed() for r in finished), [
        (r.id, r.state and r.state.name, r.state and r.state.message) for r in finished
    ]
    with stack.sync_client() as client:
        spans = [running_interval(client.read_flow_run_states(r)) for r in pair]
    assert max_overlap(spans) == 2, spans


def _wait_for_state(
    stack: Stack, run_id: UUID, state_type: StateType, timeout: float = 60
) -> State:
    deadline = time.monotonic() + timeout
    with stack.sync_client() as client:
        while True:
            state = client.read_flow_run(run_id).state
            if state is not None and state.type is state_type:
                return state
            if time.monotonic() > deadline:
                pytest.fail(f"run {run_id} is {state!r}, not {state_type.value}, after {timeout} s")
            time.sleep(0.25)


def test_a_job_that_crashes_on_every_attempt_is_failed_saying_it_gave_up(stack: Stack) -> None:
    """The real automations, driven by real state changes of a run no worker picks up.

    Breaks: the run crashes on each of its attempts (its states are set through Prefect's API,
    not forced, so orchestration counts each run). Must survive: it is scheduled again after
    each crash but the last, then failed with "Gave up after N attempts", its crashes in its
    history.
    """
    attempts = SupervisionSettings().crash_attempts  # The stack's: it does not set it.
    with stack.sync_client() as client:
        client.update_work_pool("update", WorkPoolUpdate(is_paused=True))
        try:
            deployment = client.read_deployment_by_name("update/update")
            run_id = client.create_flow_run_from_deployment(
                deployment.id, parameters={"server_id": str(uuid.uuid4())}
            ).id
            for attempt in range(1, attempts + 1):
                _wait_for_state(stack, run_id, StateType.SCHEDULED)
                client.set_flow_run_state(run_id, State(type=StateType.PENDING))
                client.set_flow_run_state(run_id, State(type=StateType.RUNNING))
                assert client.read_flow_run(run_id).run_count == attempt
                client.set_flow_run_state(
                    run_id, State(type=StateType.CRASHED, message=f"crash {attempt} of the test")
                )
            final = _wait_for_state(stack, run_id, StateType.FAILED)
            history = client.read_flow_run_states(run_id)
        finally:
            client.update_work_pool("update", WorkPoolUpdate(is_paused=False))
    assert final.message == gave_up_message(attempts)
    crashes = [s.message for s in history if s.type is StateType.CRASHED]
    assert crashes == [f"crash {n} of the test" for n in range(1, attempts + 1)]


def test_a_crash_whose_event_was_lost_is_run_again_when_the_server_starts(stack: Stack) -> None:
    """The re-run automation takes the start's `CRASH_FOUND_EVENT` for a lost Crashed event.

    Breaks: a run's Crashed event never reaches the re-run automation (here it is switched off
    while the run crashes; in life the event dies unprocessed with an embedded server that is
    stopped just then). Must survive: the run stays Crashed until a server start hands it on
    (`refind_crashed_runs`, which an embedded `make up` calls after its bootstrap, for crashes
    before the server started: a later one is the server's own, its event on the way), and
    then it is scheduled again, same id, its attempts counted as before.
    """
    queue = get_queue("update")
    with stack.sync_client() as client:
        (rerun,) = client.read_automations_by_name(rerun_name(queue))
        client.update_work_pool(queue.name, WorkPoolUpdate(is_paused=True))
        client.pause_automation(rerun.id)
        try:
            deployment = client.read_deployment_by_name("update/update")
            run_id = client.create_flow_run_from_deployment(
                deployment.id, parameters={"server_id": str(uuid.uuid4())}
            ).id
            client.set_flow_run_state(run_id, State(type=StateType.PENDING))
            client.set_flow_run_state(run_id, State(type=StateType.RUNNING))
            client.set_flow_run_state(run_id, State(type=StateType.CRASHED, message="lost"))
            crashed = client.read_flow_run(run_id).state
            assert crashed is not None
            time.sleep(2)
            client.resume_automation(rerun.id)
            time.sleep(EVALUATION_SLACK / 5)
            lost = client.read_flow_run(run_id)
            assert lost.state_type is StateType.CRASHED, lost.state  # nothing replays it

            async def refind(before: datetime) -> int:
                async with stack.client() as async_client:
                    return await refind_crashed_runs(async_client, crashed_before=before)

            # A crash after the server's start is its own, its event on the way: left alone.
            asyncio.run(refind(crashed.timestamp - timedelta(seconds=1)))
            time.sleep(EVALUATION_SLACK / 5)
            assert client.read_flow_run(run_id).state_type is StateType.CRASHED
            assert asyncio.run(refind(datetime.now(UTC))) >= 1
            again = _wait_for_state(stack, run_id, StateType.SCHEDULED)
            assert again.name == "AwaitingRetry", again
            assert client.read_flow_run(run_id).run_count == 1
            client.delete_flow_run(run_id)
        finally:
            client.resume_automation(rerun.id)
            client.update_work_pool(queue.name, WorkPoolUpdate(is_paused=False))
