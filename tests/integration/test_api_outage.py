"""Prefect down or silent while jobs are enqueued: a clear 503 with Retry-After, never a job
that nobody was told about; once Prefect is back, the same request succeeds.

Both tests stop the session stack's Prefect server (or its database) and bring it back before
they end.
"""

from __future__ import annotations

import sqlite3
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterTags
from prefect.client.schemas.objects import FlowRun, StateType

from deployments.catalogue import user_tag
from deployments.local_target import LocalTarget
from deployments.stack import Stack
from tests.integration.conftest import InventoryFile
from tests.support.api import Api, error, ok

pytestmark = pytest.mark.slow


@pytest.fixture
def api(stack: Stack) -> Iterator[Api]:
    assert stack.shim_url and stack.jwt_secret
    with Api(stack.shim_url, stack.jwt_secret, f"outage-{uuid.uuid4().hex[:6]}") as client:
        yield client


def runs_of(stack: Stack, user_id: str) -> list[FlowRun]:
    with stack.sync_client() as client:
        return client.read_flow_runs(
            flow_run_filter=FlowRunFilter(tags=FlowRunFilterTags(all_=[user_tag(user_id)]))
        )


def refused(response: Any) -> str:
    message = error(response, 503)
    assert int(response.headers["Retry-After"]) > 0
    return message


def test_prefect_stopped_then_started_503_with_retry_after_then_the_job_runs(
    stack: Stack, api: Api, target: LocalTarget, inventory: InventoryFile
):
    server_id = inventory.add_server(target)
    path = f"/api/servers/{server_id}/scan"
    assert stack.server is not None
    stack.server.stop(15)
    try:
        began = time.monotonic()
        message = refused(api.post(path, json={"scan_type": "quick"}))
        assert "cannot be reached" in message and "not created" in message
        # Nothing listens: the shim says so at once, without waiting out its Prefect timeout.
        assert time.monotonic() - began < 5
        assert "cannot be reached" in refused(api.get("/api/jobs"))
    finally:
        stack.start_server()

    job = ok(api.post(path, json={"scan_type": "quick"}), 202)
    assert api.wait_for_state(job["jobId"], "completed", "failed")["state"] == "completed"
    assert [str(run.id) for run in runs_of(stack, api.user_id)] == [job["jobId"]]


def test_a_create_that_lands_after_its_503_is_cancelled(
    stack: Stack, api: Api, target: LocalTarget, inventory: InventoryFile
):
    """Hold SQLite's write lock from outside while a job is POSTed: Prefect takes the request
    and waits for the lock, the shim gives up after its timeout (503: not created); once the
    lock is released the create goes through late, and the shim cancels that run."""
    if stack.backend is not None and stack.backend.scaled:
        pytest.skip("holds the embedded SQLite database's write lock")
    server_id = inventory.add_server(target)
    database = sqlite3.connect(stack.prefect_home / "prefect.db", timeout=30)
    database.isolation_level = None
    database.execute("BEGIN IMMEDIATE")
    try:
        message = refused(api.post(f"/api/servers/{server_id}/scan", json={"scan_type": "quick"}))
        assert "did not answer" in message and "not created" in message
    finally:
        database.execute("ROLLBACK")
        database.close()

    deadline = time.monotonic() + 60
    while True:
        runs = runs_of(stack, api.user_id)
        final = all(r.state is not None and r.state.is_final() for r in runs)
        if (runs and final) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert len(runs) == 1, runs
    (run,) = runs
    # Cancelled, whether a worker had started it meanwhile (Cancelling kills it) or not.
    assert run.state is not None and run.state.type is StateType.CANCELLED, run.state
    with stack.sync_client() as client:
        messages = [s.message or "" for s in client.read_flow_run_states(run.id)]
    assert any("answered 503" in m for m in messages), messages

    job = ok(api.post(f"/api/servers/{server_id}/scan", json={"scan_type": "quick"}), 202)
    assert api.wait_for_state(job["jobId"], "completed", "failed")["state"] == "completed"
