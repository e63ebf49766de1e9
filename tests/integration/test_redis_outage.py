"""Redis unreachable in scaled mode, then back, on a stack of the test's own.

Breaks: the stack reaches its Redis (prefect-redis: messaging, the event cache, leases, the
docket) through a TCP proxy, and the test cuts it: every connection reset, new ones refused, as
when Redis stops; PostgreSQL stays up. Must survive: while Redis is away, an enqueue through the
shim answers 503 with Retry-After and says the job was not created, and none was (Prefect's
create fails mid-request with a 500 and rolls back; the shim looks the run up before it says
so); job reads still answer (they need only PostgreSQL); no process dies. When the proxy
forwards again, with nothing restarted, a new job enqueued through the shim runs to Completed
on a worker: the Prefect server, its services and the workers reconnected by themselves.

The stack is the test's own (one Prefect server with its services, one worker per pool, a fresh
PostgreSQL database, Redis DB 13): the session's scaled stack talks to Redis directly, and
routing every scaled test's Redis traffic through a Python proxy would slow them all.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterTags

from deployments.control.catalogue import user_tag
from deployments.system.local_target import LocalTarget, free_port
from deployments.system.stack import Stack
from tasks.core.settings import BackendSettings
from tests.integration.conftest import CHECK_CRON, MAINTENANCE_CRON, InventoryFile
from tests.support.api import Api, error, ok
from tests.support.cuttable import CuttableProxy
from tests.support.scaled import (
    REDIS_DB_OUTAGE,
    REDIS_HOST,
    REDIS_PORT,
    auth_string,
    scaled_backend,
)

pytestmark = [pytest.mark.scaled, pytest.mark.slow, pytest.mark.timeout(600)]

log = logging.getLogger(__name__)

#: Seconds an enqueue may take to be refused while Redis is away: the Prefect server's Redis
#: client retries its connections for a few seconds, within the shim's 10 s Prefect timeout
#: (past it the shim answers the same 503 after looking the run up).
REFUSED_WITHIN = 20.0
#: Seconds Redis stays away: long enough for the workers' polls and the server's consumers to
#: fail again and again and back off (Prefect's worker backs off to 20 s, the consumers' retries
#: grow with each attempt).
OUTAGE_SECONDS = 45.0
#: Seconds, after Redis is back, for the shim to take a new job (following Retry-After) ...
TAKEN_WITHIN = 30.0
#: ... and for a worker to run it to Completed.
COMPLETED_WITHIN = 180.0


@pytest.fixture
def redis_behind_proxy(
    tmp_path: Path, inventory: InventoryFile
) -> Iterator[tuple[Stack, CuttableProxy]]:
    """A scaled stack of its own whose every Redis connection goes through a cuttable proxy."""
    proxy = CuttableProxy(REDIS_PORT, REDIS_HOST).start()
    try:
        with scaled_backend(redis_db=REDIS_DB_OUTAGE, prefix="mm_outage") as direct:
            backend = BackendSettings(
                database_url=direct.database_url,
                redis_url=f"redis://127.0.0.1:{proxy.port}/{REDIS_DB_OUTAGE}",
            )
            stack = Stack(
                tmp_path / "stack",
                port=free_port(),
                inventory=inventory.path,
                api_port=free_port(),
                ui=False,
                backend=backend,
                auth_string=auth_string(),
                extra_env={"MM_MAINTENANCE_CRON": MAINTENANCE_CRON, "MM_CHECK_CRON": CHECK_CRON},
            )
            try:
                stack.start(timeout=180)
                yield stack, proxy
            finally:
                stack.stop()
    finally:
        proxy.close()


def _pids(stack: Stack) -> dict[str, int | None]:
    children = {"server": stack.server, "shim": stack.shim, **stack.workers}
    return {name: c.pid if c is not None and c.alive() else None for name, c in children.items()}


def _job_ids(stack: Stack, user_id: str) -> set[str]:
    with stack.sync_client() as client:
        runs = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(tags=FlowRunFilterTags(all_=[user_tag(user_id)]))
        )
    return {str(run.id) for run in runs}


def test_redis_cut_then_back_503_not_created_then_a_new_job_completes(
    redis_behind_proxy: tuple[Stack, CuttableProxy],
    target: LocalTarget,
    inventory: InventoryFile,
):
    stack, proxy = redis_behind_proxy
    assert stack.shim_url and stack.jwt_secret
    user = f"redis-{uuid.uuid4().hex[:6]}"
    server_id = inventory.add_server(target, owners=[user])
    path = f"/api/servers/{server_id}/scan"
    pids = _pids(stack)
    assert None not in pids.values(), pids
    with Api(stack.shim_url, stack.jwt_secret, user) as api:
        # A job first, so that every process holds Redis connections when they are cut.
        before = ok(api.post(path, json={"scan_type": "quick"}), 202)["jobId"]
        assert api.wait_for_state(before, "completed", "failed")["state"] == "completed"

        proxy.cut()
        cut_at = time.monotonic()
        try:
            for _ in range(2):
                began = time.monotonic()
                response = api.post(path, json={"scan_type": "quick"})
                took = time.monotonic() - began
                message = error(response, 503)
                assert int(response.headers["Retry-After"]) > 0
                assert "not created" in message, message
                assert took < REFUSED_WITHIN, f"refused after {took:.1f} s"
                log.info("Redis away: enqueue refused in %.1f s: %s", took, message)
            assert api.job(before)["state"] == "completed"
            assert _job_ids(stack, api.user_id) == {before}
            while time.monotonic() - cut_at < OUTAGE_SECONDS:
                assert _pids(stack) == pids
                time.sleep(1)
        finally:
            proxy.mend()

        began = time.monotonic()
        while (response := api.post(path, json={"scan_type": "quick"})).status_code == 503:
            assert time.monotonic() - began < TAKEN_WITHIN, response.text
            time.sleep(int(response.headers["Retry-After"]))
        after = ok(response, 202)["jobId"]
        job = api.wait_for_state(after, "completed", "failed", timeout=COMPLETED_WITHIN)
        assert job["state"] == "completed", job
        log.info("Redis back: a new job completed %.1f s later", time.monotonic() - began)

    # The refused enqueues never turned into runs, and nothing was restarted.
    assert _job_ids(stack, api.user_id) == {before, after}
    assert _pids(stack) == pids
