"""Servers have owners: a user enqueues only on servers whose inventory `owners` name them,
sees only their own jobs on those (a server taken from them takes its jobs along), and never
the command text an admin wrote into the inventory; an admin sees and uses everything."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator

import pytest
from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

from deployments.cli.jobs import snapshot
from deployments.system.local_target import LocalTarget
from deployments.system.stack import Stack
from tests.integration.conftest import InventoryFile
from tests.support.api import Api, error, ok, sse_events

#: What an admin might write into a hook: a credential, which no user may ever see.
TOKEN = f"tok-{uuid.uuid4().hex}"


@pytest.fixture
def user(stack: Stack) -> Iterator[Api]:
    assert stack.shim_url and stack.jwt_secret
    with Api(stack.shim_url, stack.jwt_secret, f"owner-{uuid.uuid4().hex[:6]}") as api:
        yield api


@pytest.fixture(scope="module")
def admin(stack: Stack) -> Iterator[Api]:
    assert stack.shim_url and stack.jwt_secret
    with Api(stack.shim_url, stack.jwt_secret, "root", "admin") as api:
        yield api


def scan(api: Api, server_id: uuid.UUID) -> str:
    job_id: str = ok(api.post(f"/api/servers/{server_id}/scan", json={"scan_type": "quick"}), 202)[
        "jobId"
    ]
    return job_id


def test_a_user_uses_and_sees_only_the_servers_they_own(
    user: Api, admin: Api, target: LocalTarget, inventory: InventoryFile
):
    a, b = (inventory.add_server(target, owners=[user.user_id]) for _ in range(2))
    c = inventory.add_server(target, update={"command": "true"}, backup={"paths": ["/srv"]})
    d = inventory.add_server(target, owners=[user.user_id, "someone-else"])
    jobs = {server: scan(user, server) for server in (a, b, d)}
    admins_on_c = scan(admin, c)
    for job_id in [*jobs.values(), admins_on_c]:
        assert admin.wait_for_state(job_id, "completed", "failed")["state"] == "completed"

    # Another's server answers as an unknown one: nothing tells that it exists.
    unknown = uuid.uuid4()
    for action in ("backup", "scan", "update"):
        refused = error(user.post(f"/api/servers/{c}/{action}", json={}), 404)
        missing = error(user.post(f"/api/servers/{unknown}/{action}", json={}), 404)
        assert refused == missing.replace(str(unknown), str(c))
    error(user.get(f"/api/jobs/{admins_on_c}"), 404)

    # D is taken from the user: its job goes with it, for reads, actions, lists and counts.
    inventory.set_owners(d, ["someone-else"])
    gone = jobs[d]
    for response in (
        user.get(f"/api/jobs/{gone}"),
        user.get(f"/api/jobs/{gone}/events"),
        user.post(f"/api/jobs/{gone}/retry"),
        user.delete(f"/api/jobs/{gone}"),
    ):
        error(response, 404)
    error(user.post(f"/api/servers/{d}/scan", json={}), 404)
    listed = ok(user.get("/api/jobs", params={"limit": 200}))
    assert sorted(j["id"] for j in listed["jobs"]) == sorted([jobs[a], jobs[b]])
    assert listed["total"] == 2
    assert {j["data"]["serverId"] for j in listed["jobs"]} == {str(a), str(b)}
    stats = ok(user.get("/api/jobs/stats/all"))
    assert stats["scan"]["completed"] == stats["scan"]["total"] == 2
    assert stats["backup"]["total"] == stats["update"]["total"] == 0
    metrics = ok(user.get("/api/metrics/queues"))
    assert sum(metrics[q]["total"] for q in ("backup", "scan", "update")) == 2
    system = ok(user.get("/api/metrics/system"))
    assert sum(q["total"] for q in system["queues"].values()) == 2

    # The admin sees all of them, and the user's job on D is the user's once more if D is.
    everything = {j["id"] for j in ok(admin.get("/api/jobs", params={"limit": 200}))["jobs"]}
    assert {*jobs.values(), admins_on_c} <= everything
    assert admin.job(gone)["data"]["userId"] == user.user_id
    assert ok(admin.get("/api/jobs/stats/all"))["scan"]["total"] >= 4
    inventory.set_owners(d, [user.user_id])
    assert user.job(gone)["state"] == "completed"


def test_a_user_owning_no_server_sees_nothing(stack: Stack, admin: Api):
    assert stack.shim_url and stack.jwt_secret
    with Api(stack.shim_url, stack.jwt_secret, f"nobody-{uuid.uuid4().hex[:6]}") as nobody:
        assert ok(nobody.get("/api/servers")) == []
        assert ok(nobody.get("/api/jobs"))["total"] == 0
        assert all(c["total"] == 0 for c in ok(nobody.get("/api/jobs/stats/all")).values())


def test_the_server_list_shows_users_their_servers_without_hosts_keys_or_commands(
    user: Api, admin: Api, target: LocalTarget, inventory: InventoryFile
):
    backup = {"paths": ["/srv"], "pre": f"echo {TOKEN}", "post": f"echo {TOKEN}"}
    full = inventory.add_server(
        target, owners=[user.user_id], backup=backup, update={"command": f"echo {TOKEN}"}
    )
    bare = inventory.add_server(target, owners=[user.user_id])
    inventory.add_server(target, owners=["someone-else"])

    response = user.get("/api/servers")
    servers = ok(response)
    assert [(s["id"], s["actions"], s["access"]) for s in servers] == [
        (str(full), ["backup", "scan", "update"], None),
        (str(bare), ["scan"], None),
    ]
    for secret in (TOKEN, str(target.user_key), str(target.known_hosts), str(target.port)):
        assert secret not in response.text

    response = admin.get("/api/servers")
    by_id = {s["id"]: s for s in ok(response)}
    assert by_id[str(full)]["access"] == {
        "host": "127.0.0.1",
        "port": target.port,
        "username": target.username,
        "owners": [user.user_id],
    }
    for secret in (TOKEN, str(target.user_key), str(target.known_hosts)):
        assert secret not in response.text


def test_a_failed_hook_or_update_shows_its_command_to_admins_only(
    stack: Stack, user: Api, admin: Api, target: LocalTarget, inventory: InventoryFile, tmp_path
):
    source = tmp_path / "source"
    source.mkdir()
    (source / "f.txt").write_text("data\n")
    # The token is in the commands' text only; their output ("denied") is no user's either.
    command = f"secret='{TOKEN}'; echo denied >&2; exit 3"
    hooked = inventory.add_server(
        target, owners=[user.user_id], backup={"paths": [str(source)], "pre": command}
    )
    updated = inventory.add_server(target, owners=[user.user_id], update={"command": command})
    jobs = [
        ok(user.post(f"/api/servers/{hooked}/backup", json={}), 202)["jobId"],
        ok(user.post(f"/api/servers/{updated}/update"), 202)["jobId"],
    ]
    seen: list[str] = []
    for job_id, step in zip(jobs, ("the pre command", "the update command"), strict=True):
        job = user.wait_for_state(job_id, "completed", "failed")
        assert job["state"] == "failed"
        reason = job["failedReason"]
        assert f"{step} exited with status 3" in reason, reason
        assert TOKEN not in reason and "denied" not in reason, reason

        full = admin.job(job_id)["failedReason"]
        assert TOKEN in full and "denied" in full and "status 3" in full, full

        seen.append(user.get(f"/api/jobs/{job_id}").text)
        with user.http.stream("GET", f"/api/jobs/{job_id}/events") as stream:
            events = list(sse_events(stream))
        assert events[-1][1]["state"] == "failed"
        seen.append(str(events))
    seen.append(user.get("/api/jobs", params={"state": "failed", "limit": 200}).text)
    assert all(TOKEN not in text for text in seen)
    # An admin's read, kept for the next read of the settled job, is not what the user gets.
    assert TOKEN not in user.get(f"/api/jobs/{jobs[0]}").text

    with stack.sync_client() as client:
        ids = [uuid.UUID(j) for j in jobs]
        logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=ids)))
    text = "\n".join(log.message for log in logs)
    assert "running the pre command" in text
    assert TOKEN not in text

    # The operator's CLI shows what an admin sees.
    async def cli_view(job_id: str) -> str | None:
        async with stack.client() as client:
            return (await snapshot(client, uuid.UUID(job_id))).message

    assert TOKEN in (asyncio.run(cli_view(jobs[0])) or "")
