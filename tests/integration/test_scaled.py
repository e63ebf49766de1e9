"""Scaled mode as an installation runs it: PostgreSQL, Redis, two API processes, two worker hosts.

Runs with `pytest --stack-mode=scaled` (the second half of `make test`). The pool limits across
two workers per pool are tested by test_pools.py, which runs in both modes.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path

import asyncpg
import pytest
import redis
from prefect.client.schemas.objects import StateType

from deployments.control.queues import QUEUES
from tests.support.failover import Failover
from tests.support.scaled import REDIS_DB_TESTS, REDIS_HOST, REDIS_PORT
from tests.support.trees import make_tree

pytestmark = pytest.mark.scaled


def _environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    pairs = (item.decode(errors="replace").split("=", 1) for item in raw if b"=" in item)
    return dict(pairs)


def test_prefect_state_is_in_postgresql_and_redis(stack, run_job, wait_for_final_state):
    run = wait_for_final_state(
        run_job("scan/scan", {"server_id": str(uuid.uuid4()), "job_type": "scan:quick"})
    )
    assert run.state is not None and run.state.is_final()

    async def flow_runs_in_database() -> int:
        url = stack.backend.database_url.replace("postgresql+asyncpg", "postgresql")
        connection = await asyncpg.connect(url)
        try:
            query = "SELECT count(*) FROM flow_run WHERE id = $1"
            return int(await connection.fetchval(query, run.id))
        finally:
            await connection.close()

    assert asyncio.run(flow_runs_in_database()) == 1
    keys = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=REDIS_DB_TESTS).dbsize()
    assert keys > 0, "Redis DB of the stack is empty: messaging did not go through Redis"


def test_two_workers_per_pool_each_with_its_own_home(stack):
    homes = set()
    with stack.sync_client() as client:
        for queue in QUEUES:
            names = {w.name for w in client.read_workers_for_work_pool(queue.name)}
            assert {stack.worker_name(queue.name, 0), stack.worker_name(queue.name, 1)} <= names
            for host in (0, 1):
                worker = stack.workers[stack.worker_key(queue.name, host)]
                env = _environ(worker.pid)
                homes.add((host, env["HOME"], env["PREFECT_HOME"]))
    assert len({home for _, home, _ in homes}) == 2, homes
    assert len({prefect_home for _, _, prefect_home in homes}) == 2, homes


def test_jobs_complete_when_an_api_process_is_killed_mid_run(
    stack, failover: Failover, target, inventory, run_job, wait_for_final_state, tmp_path
):
    """kill -9 one of the two API processes while jobs run; every job completes, each once."""
    source = make_tree(tmp_path / "source", big_bytes=1000)
    server_id = inventory.add_server(target, backup={"paths": [str(source)], "pre": "sleep 2"})
    runs = [run_job("backup/backup", {"server_id": str(server_id)}) for _ in range(3)]
    runs += [
        run_job("scan/scan", {"server_id": str(server_id), "job_type": "scan:quick"})
        for _ in range(8)
    ]
    deadline = time.monotonic() + 60
    with stack.sync_client() as client:
        while not any(client.read_flow_run(r).state.is_running() for r in runs):
            assert time.monotonic() < deadline, "no job started within a minute"
            time.sleep(0.1)
    before = dict(failover.forwarded)
    stack.servers[0].kill()
    try:
        finished = [wait_for_final_state(run_id, timeout=240) for run_id in runs]
        with stack.sync_client() as client:
            for run in finished:
                assert run.state.is_completed(), (run.id, run.state.name, run.state.message)
                assert run.run_count == 1, (run.id, run.run_count)
                running = [
                    s for s in client.read_flow_run_states(run.id) if s.type is StateType.RUNNING
                ]
                assert len(running) == 1, (run.id, [s.name for s in running])
        # Both processes served before the kill; the survivor served everything after it.
        assert all(before.get(port, 0) > 0 for port in failover.upstream_ports), before
        survivor = failover.upstream_ports[1]
        assert failover.forwarded[survivor] > before[survivor]
    finally:
        stack.start_api_server(0)
