"""One job that changes a server at a time (tasks/server_slot.py): a backup and an update of
one server enqueued together take turns on it, and a scan of it runs beside them.

Breaks: the backup's pre command and the update each take seconds, and both are enqueued at
once (two pools, two workers: nothing else keeps them apart). Must survive: on the server,
their commands' periods never overlap; the scan ends while the backup holds the server; the
server's limit is in Prefect (the UI's global concurrency limits) with no slot left held.
While the second waits for the server, the API and the CLI show it `waiting` (its run is
Running, tagged), in the lists and counts too; once it has the server, `active`, untagged.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from prefect.client.schemas.objects import StateType

from deployments.cli.jobs import snapshot
from deployments.control.states import JobState
from deployments.system.stack import Stack
from tasks.core.inventory import load_inventory
from tasks.core.jobs import WAITING_FOR_SERVER_TAG
from tasks.server_slot import slot_name
from tests.support.api import Api, ok
from tests.support.trees import make_tree

pytestmark = [pytest.mark.slow, pytest.mark.prefect]

#: Seconds each job holds the server: long enough for a quick scan to start and end meanwhile.
HOLD = 10


def _mark(log: Path, what: str) -> str:
    return f'echo "{what} $(date +%s.%N)" >> {log}'


def _periods(log: Path) -> dict[str, tuple[float, float]]:
    stamps = dict(line.split() for line in log.read_text().splitlines())
    return {
        job: (float(stamps[f"{job}-start"]), float(stamps[f"{job}-end"]))
        for job in ("backup", "update")
    }


def test_a_backup_and_an_update_of_one_server_take_turns_and_a_scan_runs_beside(
    stack, target, inventory, run_job, wait_for_final_state, tmp_path
):
    log = tmp_path / "on-the-server.log"
    source = make_tree(tmp_path / "source")
    server_id = inventory.add_server(
        target,
        backup={
            "paths": [str(source)],
            "pre": f"{_mark(log, 'backup-start')}; sleep {HOLD}",
            "post": _mark(log, "backup-end"),
        },
        update={
            "command": f"{_mark(log, 'update-start')}; sleep {HOLD}; {_mark(log, 'update-end')}"
        },
    )
    backup_run = run_job(
        "backup/backup", {"server_id": str(server_id), "backup_id": str(uuid.uuid4())}
    )
    update_run = run_job("update/update", {"server_id": str(server_id)})
    scan_run = run_job("scan/scan", {"server_id": str(server_id), "job_type": "scan:quick"})

    assert stack.shim_url and stack.jwt_secret
    with Api(stack.shim_url, stack.jwt_secret, "root", "admin") as admin:
        jobs = {"backup": str(backup_run), "update": str(update_run)}
        holder, waiter = _in_turn(admin, log, jobs)
        _shows_waiting(stack, admin, holder, waiter)
        # Its turn: the holder's hold ends within HOLD seconds, the waiter then holds HOLD.
        job = admin.wait_for_state(waiter["id"], "active", "completed", "failed", timeout=60)
        assert job["state"] == "active", job
        with stack.sync_client() as client:
            assert WAITING_FOR_SERVER_TAG not in client.read_flow_run(waiter["id"]).tags
        assert waiter["id"] in _listed(admin, "active")
        assert waiter["id"] not in _listed(admin, "waiting")

    runs = {
        name: wait_for_final_state(run_id, timeout=240)
        for name, run_id in (("backup", backup_run), ("update", update_run), ("scan", scan_run))
    }

    assert all(run.state is not None and run.state.is_completed() for run in runs.values()), {
        name: run.state for name, run in runs.items()
    }
    periods = _periods(log)
    (_, first_end), (second, _) = sorted(periods.values())
    assert first_end <= second, periods
    # The scan took no slot: it ended while the first job still held the server.
    scan_end = runs["scan"].end_time
    assert scan_end is not None and scan_end.timestamp() < first_end, (scan_end, periods)
    server = load_inventory(inventory.path).get(server_id)
    assert server is not None
    with stack.sync_client() as client:
        limit = client.read_global_concurrency_limit_by_name(slot_name(server))
    assert limit.limit == 1 and limit.active_slots == 0


def _in_turn(admin: Api, log: Path, jobs: dict[str, str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the job holding the server, the one waiting for it) as the API shows them, once the
    holder's command has begun on the server and the other has started and waits: `waiting`
    with a start time (a queued job has none). Not sooner: a job in its quick try of the slot
    reads `active` without holding it, and under load both may wait at first."""
    deadline = time.monotonic() + 90
    while True:
        marks = log.read_text() if log.exists() else ""
        begun = [name for name in jobs if f"{name}-start" in marks]
        if len(begun) == 1:
            (other,) = set(jobs) - set(begun)
            waiter = admin.job(jobs[other])
            if waiter["state"] == "waiting" and waiter["processedOn"] is not None:
                return admin.job(jobs[begun[0]]), waiter
        if time.monotonic() > deadline:
            views = {name: admin.job(job_id) for name, job_id in jobs.items()}
            pytest.fail(f"no job waits while the other holds the server: {views}", pytrace=False)
        time.sleep(0.25)


def _shows_waiting(
    stack: Stack, admin: Api, holder: dict[str, Any], waiter: dict[str, Any]
) -> None:
    """Every view of the waiter says `waiting` while the holder holds the server (for HOLD
    seconds: these reads take about one)."""
    with stack.sync_client() as client:
        run = client.read_flow_run(waiter["id"])
    assert run.state is not None and run.state.type is StateType.RUNNING
    assert WAITING_FOR_SERVER_TAG in run.tags
    assert run.run_count == 1  # a tag, not a new Running state: no attempt counted
    assert admin.job(holder["id"])["state"] == "active"

    async def cli_view() -> JobState:
        async with stack.client() as client:
            return (await snapshot(client, uuid.UUID(waiter["id"]))).state

    assert asyncio.run(cli_view()) is JobState.WAITING

    # The lists over all pools (a union of slices) and over the job's own pool.
    assert waiter["id"] in _listed(admin, "waiting")
    assert holder["id"] in (active := _listed(admin, "active"))
    assert waiter["id"] not in active
    pool = waiter["queue"]
    waiting_here = ok(admin.get("/api/jobs", params={"state": "waiting", "queue": pool}))
    assert waiter["id"] in [j["id"] for j in waiting_here["jobs"]]
    assert {j["state"] for j in waiting_here["jobs"]} == {"waiting"}
    # The counts agree with the lists, and count the job once: the pool's states add up to
    # all its jobs.
    counts = ok(admin.get("/api/jobs/stats/all"))[pool]
    assert counts["waiting"] == waiting_here["total"]
    active_here = ok(admin.get("/api/jobs", params={"state": "active", "queue": pool}))
    assert counts["active"] == active_here["total"]
    everything = ok(admin.get("/api/jobs", params={"queue": pool, "limit": 1}))
    assert counts["total"] == everything["total"]


def _listed(admin: Api, state: str) -> list[str]:
    """The ids of the jobs the API lists as `state` (up to 200), checked against its total."""
    page = ok(admin.get("/api/jobs", params={"state": state, "limit": 200}))
    assert page["count"] == len(page["jobs"]) == min(page["total"], 200), page["total"]
    assert {j["state"] for j in page["jobs"]} <= {state}
    return [j["id"] for j in page["jobs"]]
