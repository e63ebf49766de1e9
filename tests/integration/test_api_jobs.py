"""The job endpoints of the API shim against the real stack: a completed, a failed after
retries, an active and a delayed job, with every documented field checked."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from prefect.states import Scheduled

from deployments.control.catalogue import SCAN, job_type_tag, server_tag, user_tag
from deployments.system.local_target import LocalTarget, free_port
from deployments.system.stack import Stack
from tasks.core.jobs import JobType
from tests.integration.conftest import InventoryFile
from tests.support.api import Api, error, ok, sse_events
from tests.support.trees import make_tree

JOB_FIELDS = {
    "id", "name", "data", "state", "progress", "attempts", "maxAttempts", "timestamp",
    "processedOn", "finishedOn", "result", "queue", "failedReason",
}  # fmt: skip


def api_of(stack: Stack, user_id: str, role: str = "user") -> Iterator[Api]:
    assert stack.shim_url, "the stack did not start the API shim"
    assert stack.jwt_secret
    with Api(stack.shim_url, stack.jwt_secret, user_id, role) as api:
        yield api


@pytest.fixture(scope="module")
def alice(stack: Stack) -> Iterator[Api]:
    yield from api_of(stack, f"alice-{uuid.uuid4().hex[:6]}")


@pytest.fixture(scope="module")
def bob(stack: Stack) -> Iterator[Api]:
    yield from api_of(stack, f"bob-{uuid.uuid4().hex[:6]}")


@pytest.fixture(scope="module")
def admin(stack: Stack) -> Iterator[Api]:
    yield from api_of(stack, "root", "admin")


@pytest.fixture(scope="module")
def failing_scan(alice: Api, target: LocalTarget, inventory: InventoryFile) -> dict[str, Any]:
    """A quick scan of a server whose SSH port refuses connections: retried after 5, 10 and
    20 s, then failed (~40 s). Enqueued by the first test so it fails while others run."""
    port = free_port()
    entry = target.server_entry(str(uuid.uuid4()), "refusing", owners=[alice.user_id])
    server_id = inventory.add({**entry, "port": port})
    response = alice.post(f"/api/servers/{server_id}/scan", json={"scan_type": "quick"})
    data: dict[str, Any] = ok(response, 202)
    return {**data, "enqueuedServerId": str(server_id), "refusedPort": port}


def test_scan_request_answers_at_once_with_its_ids(failing_scan: dict[str, Any], alice: Api):
    assert set(failing_scan) >= {"jobId", "scanId", "serverId", "status", "message"}
    assert failing_scan["status"] == "pending"
    assert failing_scan["serverId"] == failing_scan["enqueuedServerId"]
    uuid.UUID(failing_scan["scanId"])
    job = alice.job(failing_scan["jobId"])
    assert job["name"] == "scan:quick"
    assert job["queue"] == "scan"
    assert job["data"]["scanId"] == failing_scan["scanId"]
    assert job["data"]["userId"] == alice.user_id


def test_completed_backup_shows_every_field(
    alice: Api, stack: Stack, target: LocalTarget, inventory: InventoryFile, tmp_path
):
    source = make_tree(tmp_path / "source", big_bytes=10_000)
    server_id = inventory.add_server(
        target, name="web east-1", backup={"paths": [str(source)]}, owners=[alice.user_id]
    )
    before = int(time.time() * 1000)
    body = {"backup_type": "full", "compression": True, "encryption": False, "priority": "high"}
    enqueued = ok(alice.post(f"/api/servers/{server_id}/backup", json=body), 202)
    assert enqueued["status"] == "pending" and enqueued["serverId"] == str(server_id)

    job = alice.wait_for_state(enqueued["jobId"], "completed", "failed")

    assert set(job) == JOB_FIELDS
    assert job["state"] == "completed", job["failedReason"]
    assert job["id"] == enqueued["jobId"]
    assert job["name"] == "backup:manual"
    assert job["queue"] == "backup"
    assert job["data"] == {
        "serverId": str(server_id),
        "backupId": enqueued["backupId"],
        "scanId": None,
        "updateId": None,
        "userId": alice.user_id,
        "options": {"backup_type": "full", "compression": True, "encryption": False},
    }
    assert job["progress"] == 100
    assert job["attempts"] == 1
    assert job["maxAttempts"] == 4
    assert before - 1000 <= job["timestamp"] <= job["processedOn"] <= job["finishedOn"]
    assert job["finishedOn"] <= int(time.time() * 1000)
    assert job["result"]["backupId"] == enqueued["backupId"]
    assert job["result"]["status"] == "completed"
    assert isinstance(job["result"]["duration"], int | float)
    assert job["failedReason"] is None
    # The Prefect UI lists the run by its server's name; the id stays in parameters and tags.
    with stack.sync_client() as client:
        run = client.read_flow_run(uuid.UUID(job["id"]))
    assert run.name == "backup:manual web east-1"
    assert run.parameters["server_id"] == str(server_id) and server_tag(server_id) in run.tags

    with alice.http.stream("GET", f"/api/jobs/{job['id']}/events") as stream:
        assert stream.headers["content-type"].startswith("text/event-stream")
        events = list(sse_events(stream))
    assert [name for name, _ in events] == ["job", "end"]
    assert events[0][1] == {
        "jobId": job["id"], "state": "completed", "progress": 100, "message": None, "final": True
    }  # fmt: skip


def test_idempotency_key_returns_the_same_job_per_user(
    alice: Api, bob: Api, target: LocalTarget, inventory: InventoryFile
):
    server_id = inventory.add_server(target, owners=[alice.user_id, bob.user_id])
    path = f"/api/servers/{server_id}/scan"
    headers = {"Idempotency-Key": f"k-{uuid.uuid4()}"}
    first = ok(alice.post(path, json={"scan_type": "quick"}, headers=headers), 202)
    again = ok(alice.post(path, json={"scan_type": "quick"}, headers=headers), 202)
    others = ok(bob.post(path, json={"scan_type": "quick"}, headers=headers), 202)
    unkeyed = ok(alice.post(path, json={"scan_type": "quick"}), 202)

    assert (again["jobId"], again["scanId"]) == (first["jobId"], first["scanId"])
    assert others["jobId"] != first["jobId"]
    assert unkeyed["jobId"] != first["jobId"]
    for api, job_id in ((alice, first["jobId"]), (bob, others["jobId"]), (alice, unkeyed["jobId"])):
        assert api.wait_for_state(job_id, "completed", "failed")["state"] == "completed"


def test_unknown_server_is_404_and_bad_bodies_name_the_field(alice: Api):
    missing = uuid.uuid4()
    message = error(alice.post(f"/api/servers/{missing}/backup", json={}), 404)
    assert str(missing) in message
    message = error(alice.post(f"/api/servers/{missing}/scan", json={"scan_type": "slow"}), 422)
    assert "scan_type" in message
    message = error(alice.post(f"/api/servers/{missing}/backup", json={"compression": 7}), 422)
    assert "compression" in message
    assert "server_id" in error(alice.post("/api/servers/not-a-uuid/update"), 422)


def test_active_job_streams_events_refuses_removal_and_cancels(
    alice: Api, target: LocalTarget, inventory: InventoryFile
):
    server_id = inventory.add_server(target, update={"command": "sleep 30"}, owners=[alice.user_id])
    enqueued = ok(alice.post(f"/api/servers/{server_id}/update"), 202)
    job_id = enqueued["jobId"]
    uuid.UUID(enqueued["updateId"])

    job = alice.wait_for(job_id, lambda j: j["state"] == "active" and j["progress"] >= 40)
    assert job["name"] == "update:server" and job["queue"] == "update"
    assert job["processedOn"] is not None and job["finishedOn"] is None
    assert job["attempts"] == 1 and job["result"] is None and job["failedReason"] is None
    assert "cancel" in error(alice.delete(f"/api/jobs/{job_id}"), 409)
    assert "failed" in error(alice.post(f"/api/jobs/{job_id}/retry"), 409)

    with alice.http.stream("GET", f"/api/jobs/{job_id}/events") as stream:
        events = sse_events(stream)
        name, first = next(events)
        assert (name, first["state"], first["final"]) == ("job", "active", False)
        cancelled = ok(alice.post(f"/api/jobs/{job_id}/cancel"))
        assert cancelled == {"jobId": job_id, "state": "active"}
        rest = list(events)
    assert rest[-1][0] == "end"
    assert rest[-1][1]["state"] == "cancelled"
    assert alice.job(job_id)["state"] == "cancelled"
    assert "ended" in error(alice.post(f"/api/jobs/{job_id}/cancel"), 409)


def test_delayed_job_shows_as_delayed_then_paused_with_its_pool(
    stack: Stack, alice: Api, admin: Api, inventory: InventoryFile
):
    # Never reached: the scan is deleted before it is due.
    server_id = inventory.add_server(name="unreached", owners=[alice.user_id], **UNREACHED)
    job_id = create_delayed_scan(stack, alice.user_id, server_id)
    job = alice.job(job_id)
    assert job["state"] == "delayed"
    assert job["processedOn"] is None and job["finishedOn"] is None and job["attempts"] == 0
    assert job["progress"] == 0 and job["result"] is None
    listed = ok(alice.get("/api/jobs", params={"state": "delayed", "queue": "scan"}))
    assert job_id in [j["id"] for j in listed["jobs"]]
    assert ok(alice.get("/api/jobs/stats/all"))["scan"]["delayed"] >= 1

    paused = ok(admin.post("/api/queues/pause", json={"queue": "scan"}))
    try:
        assert paused == [{"queue": "scan", "paused": True}]
        assert alice.job(job_id)["state"] == "paused"
        listed = ok(alice.get("/api/jobs", params={"state": "paused"}))
        assert [j["id"] for j in listed["jobs"]] == [job_id]
        counts = ok(alice.get("/api/jobs/stats/all"))["scan"]
        assert counts["paused"] == 1 and counts["delayed"] == 0
    finally:
        ok(admin.post("/api/queues/resume", json={"queue": "scan"}))
    assert alice.job(job_id)["state"] == "delayed"

    ok(alice.delete(f"/api/jobs/{job_id}"))
    error(alice.get(f"/api/jobs/{job_id}"), 404)


def test_list_pages_and_counts_only_the_callers_jobs(alice: Api, bob: Api, admin: Api):
    everything = ok(alice.get("/api/jobs", params={"limit": 200}))
    assert everything["count"] == len(everything["jobs"]) == everything["total"] >= 4
    assert {j["data"]["userId"] for j in everything["jobs"]} == {alice.user_id}
    first = ok(alice.get("/api/jobs", params={"limit": 1}))
    second = ok(alice.get("/api/jobs", params={"limit": 1, "offset": 1}))
    assert first["count"] == second["count"] == 1 and first["total"] == everything["total"]
    assert first["jobs"][0]["id"] != second["jobs"][0]["id"]
    completed = ok(alice.get("/api/jobs", params={"state": "completed", "queue": "backup"}))
    assert completed["total"] >= 1
    assert {(j["state"], j["queue"]) for j in completed["jobs"]} == {("completed", "backup")}

    stats = ok(alice.get("/api/jobs/stats/all"))
    assert set(stats) == {"backup", "scan", "update"}
    assert sum(s["total"] for s in stats.values()) == everything["total"]
    for counts in stats.values():
        states = {k: v for k, v in counts.items() if k != "total"}
        assert set(states) == {
            "waiting", "active", "completed", "failed", "delayed", "paused", "cancelled"
        }  # fmt: skip
        assert sum(states.values()) == counts["total"]
    all_stats = ok(admin.get("/api/jobs/stats/all"))
    assert all_stats["backup"]["total"] >= stats["backup"]["total"] + 0
    assert ok(admin.get("/api/jobs", params={"limit": 1}))["total"] > everything["total"]
    assert ok(bob.get("/api/jobs/stats/all"))["backup"]["total"] == 0

    assert "backup, scan, update" in error(alice.get("/api/jobs", params={"queue": "x"}), 400)
    message = error(alice.get("/api/jobs", params={"state": "stuck"}), 400)
    assert "waiting" in message and "delayed" in message
    # As the original: a larger limit is capped at 200, and the answer says so.
    capped = ok(alice.get("/api/jobs", params={"limit": 500}))
    assert capped["limit"] == 200 and capped["total"] == everything["total"]
    assert "limit" in error(alice.get("/api/jobs", params={"limit": 0}), 422)


def test_list_filters_by_server_under_the_ownership_rules(
    failing_scan: dict[str, Any], alice: Api, bob: Api, admin: Api
):
    server_id = failing_scan["enqueuedServerId"]
    mine = ok(alice.get("/api/jobs", params={"serverId": server_id, "limit": 200}))
    assert failing_scan["jobId"] in [j["id"] for j in mine["jobs"]]
    assert {j["data"]["serverId"] for j in mine["jobs"]} == {server_id}
    everything = ok(alice.get("/api/jobs", params={"limit": 200}))
    assert 1 <= mine["total"] < everything["total"]
    scans = ok(alice.get("/api/jobs", params={"serverId": server_id, "queue": "scan"}))
    assert scans["total"] == mine["total"]  # this server's jobs are all scans
    assert (
        ok(alice.get("/api/jobs", params={"serverId": server_id, "queue": "backup"}))["total"] == 0
    )
    # Another's server reads as one without jobs; the admin sees them.
    assert ok(bob.get("/api/jobs", params={"serverId": server_id}))["total"] == 0
    assert ok(admin.get("/api/jobs", params={"serverId": server_id}))["total"] == mine["total"]
    assert "serverId" in error(alice.get("/api/jobs", params={"serverId": "web-1"}), 422)


def test_failed_job_after_retries_shows_its_reason_and_can_be_retried(
    failing_scan: dict[str, Any], alice: Api
):
    job_id = failing_scan["jobId"]
    job = alice.wait_for_state(job_id, "completed", "failed", timeout=150)
    assert job["state"] == "failed"
    # Attempts come from the task runs, which Prefect records from their events: the last one
    # can land a moment after the flow run's Failed state (docs/API.md).
    job = alice.wait_for(job_id, lambda j: j["attempts"] >= 4, timeout=60)

    assert set(job) == JOB_FIELDS
    assert job["state"] == "failed"
    assert job["attempts"] == 4 and job["maxAttempts"] == 4
    assert "SSHConnectError" in job["failedReason"]
    assert f"port {failing_scan['refusedPort']}" in job["failedReason"]
    assert job["result"] is None
    assert job["timestamp"] <= job["processedOn"] <= job["finishedOn"]
    assert job["finishedOn"] - job["processedOn"] >= 35_000  # waited 5 + 10 + 20 s between tries
    failed = ok(alice.get("/api/jobs", params={"state": "failed", "queue": "scan"}))
    assert job_id in [j["id"] for j in failed["jobs"]]

    assert ok(alice.post(f"/api/jobs/{job_id}/retry")) == {"jobId": job_id}
    again = alice.wait_for(job_id, lambda j: j["attempts"] >= 5, timeout=60)
    assert again["id"] == job_id
    assert again["state"] in {"waiting", "active", "failed"}
    if again["state"] != "failed":
        ok(alice.post(f"/api/jobs/{job_id}/cancel"))
    alice.wait_for_state(job_id, "failed", "cancelled", timeout=60)


#: An inventory entry's connection fields for a server no job reaches.
UNREACHED = {"host": "127.0.0.1", "username": "nobody", "private_key_file": "/nonexistent/key"}


def create_delayed_scan(stack: Stack, user_id: str, server_id: uuid.UUID) -> str:
    """A scan due in an hour, created through the Prefect client as the scheduler would."""
    with stack.sync_client() as client:
        deployment = client.read_deployment_by_name(SCAN.full_name)
        run = client.create_flow_run_from_deployment(
            deployment.id,
            parameters={
                "server_id": str(server_id),
                "scan_id": str(uuid.uuid4()),
                "user_id": user_id,
                "job_type": JobType.SCAN_FULL.value,
            },
            state=Scheduled(scheduled_time=datetime.now(UTC) + timedelta(hours=1)),
            tags=[job_type_tag(JobType.SCAN_FULL), server_tag(server_id), user_tag(user_id)],
        )
    return str(run.id)


def test_a_job_asked_for_later_is_delayed_until_then_and_can_be_cancelled_before(
    alice: Api, bob: Api, stack: Stack, target: LocalTarget, inventory: InventoryFile
):
    server_id = inventory.add_server(target, owners=[alice.user_id])
    path = f"/api/servers/{server_id}/scan"
    due = datetime.now(UTC) + timedelta(seconds=8)
    body = {"scan_type": "quick", "runAt": int(due.timestamp() * 1000)}
    accepted = ok(alice.post(path, json=body), 202)
    assert accepted["status"] == "delayed"
    assert f"delayed until {due.isoformat()[:19]}" in accepted["message"]
    assert alice.job(accepted["jobId"])["state"] == "delayed"

    later = ok(alice.post(path, json={"scan_type": "quick", "delay": 600_000}), 202)
    assert later["status"] == "delayed"
    error(bob.post(f"/api/jobs/{later['jobId']}/cancel"), 404)  # not bob's
    ok(alice.post(f"/api/jobs/{later['jobId']}/cancel"))
    assert alice.job(later["jobId"])["state"] == "cancelled"

    # A time already past runs at once; one that is no time is refused, naming the field.
    past = ok(alice.post(path, json={"scan_type": "quick", "runAt": "2020-01-01T00:00Z"}), 202)
    assert past["status"] == "pending"
    assert "runAt" in error(alice.post(path, json={"runAt": "soon"}), 422)
    assert "delay" in error(alice.post(path, json={"delay": -5}), 422)
    assert "not both" in error(alice.post(path, json={"delay": 5, "runAt": 0}), 422)
    assert alice.wait_for_state(past["jobId"], "completed", "failed")["state"] == "completed"

    job = alice.wait_for_state(accepted["jobId"], "completed", "failed", timeout=90)
    assert job["state"] == "completed", job["failedReason"]
    with stack.sync_client() as client:
        states = client.read_flow_run_states(uuid.UUID(accepted["jobId"]))
    first, *rest = sorted(states, key=lambda s: s.timestamp)
    assert first.type.value == "SCHEDULED"
    assert first.state_details.scheduled_time == due.replace(
        microsecond=due.microsecond // 1000 * 1000
    )
    running = next(s for s in rest if s.type.value == "RUNNING")
    # Nothing but Pending (the worker's prefetch, docs/API.md) between Scheduled and Running,
    # and Running within a second of the time asked for (Prefect rounds its wait to seconds).
    assert {s.type.value for s in rest[: rest.index(running)]} <= {"PENDING"}
    assert abs((running.timestamp - due).total_seconds()) <= 1.0, (running.timestamp, due)


def test_job_logs_page_filter_and_keep_command_output_for_admins(
    alice: Api, bob: Api, admin: Api, stack: Stack, target: LocalTarget, inventory: InventoryFile
):
    command = "echo out-first; sleep 3; echo out-last >&2"
    server_id = inventory.add_server(target, update={"command": command}, owners=[alice.user_id])
    job_id = ok(alice.post(f"/api/servers/{server_id}/update"), 202)["jobId"]

    # The operator's CLI follows the log until the job has ended, the command's output included.
    env = {**os.environ, "PREFECT_API_URL": stack.api_url}
    if stack.auth_string:
        env["PREFECT_API_AUTH_STRING"] = stack.auth_string
    followed = subprocess.run(
        [sys.executable, "-m", "deployments.cli.main", "logs", job_id, "--follow"],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    assert followed.returncode == 0, followed.stderr
    assert "out-first" in followed.stdout and "out-last" in followed.stdout
    assert alice.job(job_id)["state"] == "completed"

    everything = ok(admin.get(f"/api/jobs/{job_id}/logs"))
    messages = [line["message"] for line in everything["logs"]]
    assert "out-first" in messages and "out-last" in messages
    times = [line["timestamp"] for line in everything["logs"]]
    assert times == sorted(times) and everything["count"] == len(times) >= 3
    warnings = ok(admin.get(f"/api/jobs/{job_id}/logs", params={"level": "warning"}))
    assert [line["message"] for line in warnings["logs"]] == ["out-last"]  # stderr: a warning
    page = ok(admin.get(f"/api/jobs/{job_id}/logs", params={"limit": 1, "offset": 1}))
    assert [line["message"] for line in page["logs"]] == messages[1:2]

    # The user who asked sees the same lines, the command's output withheld; others see nothing.
    theirs = ok(alice.get(f"/api/jobs/{job_id}/logs"))
    assert len(theirs["logs"]) == len(everything["logs"])
    assert not any("out-" in line["message"] for line in theirs["logs"])
    assert sum("shown to admins" in line["message"] for line in theirs["logs"]) == 2
    error(bob.get(f"/api/jobs/{job_id}/logs"), 404)
    assert "debug, info" in error(alice.get(f"/api/jobs/{job_id}/logs", params={"level": "x"}), 400)

    unknown = subprocess.run(
        [sys.executable, "-m", "deployments.cli.main", "logs", str(uuid.uuid4())],
        capture_output=True, text=True, env=env, timeout=60,
    )  # fmt: skip
    assert unknown.returncode == 2 and "no job" in unknown.stderr


def _cli(stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    """`medicine-man ARGS` as an operator runs it against this stack."""
    env = {**os.environ, "PREFECT_API_URL": stack.api_url}
    if stack.auth_string:
        env["PREFECT_API_AUTH_STRING"] = stack.auth_string
    return subprocess.run(
        [sys.executable, "-m", "deployments.cli.main", *args],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip


def test_bulk_enqueue_cancel_and_retry_answer_one_result_each_under_the_ownership_rules(
    stack: Stack,
    admin: Api,
    alice: Api,
    bob: Api,
    target: LocalTarget,
    inventory: InventoryFile,
):
    mine = [str(inventory.add_server(target, owners=[alice.user_id])) for _ in range(2)]
    theirs = str(inventory.add_server(target, owners=[bob.user_id]))
    body = {"serverIds": [*mine, theirs], "scan_type": "quick", "delay": 600_000}
    key = {"Idempotency-Key": f"bulk-{uuid.uuid4()}"}
    answer = ok(alice.post("/api/servers/scan", json=body, headers=key), 202)
    assert answer["count"] == 3 and answer["enqueued"] == 2
    results = {r["serverId"]: r for r in answer["results"]}
    assert not results[theirs]["success"] and "no server" in results[theirs]["message"]
    assert results[theirs]["job"] is None
    jobs = [results[s]["job"] for s in mine]
    assert all(j["status"] == "delayed" and j["serverId"] in mine for j in jobs)
    again = ok(alice.post("/api/servers/scan", json=body, headers=key), 202)
    assert [r["job"] and r["job"]["jobId"] for r in again["results"]] == [
        r["job"] and r["job"]["jobId"] for r in answer["results"]
    ]  # the same jobs for the same key
    every = ok(alice.post("/api/servers/scan", json={"all": True, "delay": 600_000}), 202)
    assert theirs not in {r["serverId"] for r in every["results"]}
    assert set(mine) <= {r["serverId"] for r in every["results"] if r["success"]}
    assert "serverIds or all" in error(alice.post("/api/servers/scan", json={}), 422)
    # Backups only of servers that have one; a server without is refused by its reason.
    body = {"serverIds": mine, "delay": 600_000}
    backups = ok(alice.post("/api/servers/backup", json=body), 202)
    assert backups["enqueued"] == 0 and "backup" in backups["results"][0]["message"]

    # Cancel by id: bob cannot cancel alice's jobs, alice can.
    ids = [j["jobId"] for j in jobs]
    refused = ok(bob.post("/api/jobs/cancel", json={"ids": ids}))
    assert refused["succeeded"] == 0 and all("no job" in r["message"] for r in refused["results"])
    cancelled = ok(alice.post("/api/jobs/cancel", json={"ids": ids}))
    assert cancelled["succeeded"] == 2 and {r["state"] for r in cancelled["results"]} == {
        "cancelled"
    }
    # ... and by filters: the delayed jobs left on one server.
    left = ok(alice.post("/api/jobs/cancel", json={"state": "delayed", "serverId": mine[0]}))
    assert left["succeeded"] == left["count"] == left["total"] == 1
    assert (
        ok(alice.get("/api/jobs", params={"serverId": mine[0], "state": "delayed"}))["total"] == 0
    )
    # The operator's CLI lists the same jobs as the API, by the same filters.
    listed = _cli(stack, "jobs", "--server", mine[0], "--json", "--limit", "200")
    assert listed.returncode == 0, listed.stderr
    record = json.loads(listed.stdout)
    api = ok(admin.get("/api/jobs", params={"serverId": mine[0], "limit": 200}))
    assert [j["id"] for j in record["jobs"]] == [j["id"] for j in api["jobs"]]
    assert record["total"] == api["total"] >= 2
    assert {j["state"] for j in record["jobs"]} == {"cancelled"}
    cancelled_only = json.loads(
        _cli(stack, "jobs", "--state", "cancelled", "--server", mine[0], "--json").stdout
    )
    assert cancelled_only["total"] == record["total"]
    bad = _cli(stack, "jobs", "--state", "stuck")
    assert bad.returncode == 2, bad.stderr
    done = ok(alice.post("/api/jobs/cancel", json={"ids": ids}))
    assert done["succeeded"] == 0 and all("already ended" in r["message"] for r in done["results"])

    # Retry by filters: a backup of a server without a `backup` section fails at once, for good.
    failed = ok(alice.post(f"/api/servers/{mine[1]}/backup"), 202)["jobId"]
    assert alice.wait_for_state(failed, "completed", "failed")["state"] == "failed"
    retried = ok(alice.post("/api/jobs/retry", json={"serverId": mine[1]}))
    assert [r["jobId"] for r in retried["results"]] == [failed]
    assert retried["succeeded"] == 1 and retried["results"][0]["state"] == "waiting"
    assert "not both" in error(
        alice.post("/api/jobs/retry", json={"ids": ids, "state": "failed"}), 422
    )
    assert "at least one filter" in error(alice.post("/api/jobs/cancel", json={}), 422)
