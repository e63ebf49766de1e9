"""Monitoring end to end: every metric the shipped alert rules and dashboard use is one that a
live /metrics exports, the job counters count a job that ends, and a real Prometheus, loading
monitoring/prometheus/rules.yml and scraping a shim, fires the stale-backup alerts and clears
them as backups complete."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from prefect.states import Completed

from deployments.system.local_target import free_port
from deployments.system.stack import PROJECT_DIR, Stack
from tasks.atomic import write_atomic
from tasks.repository import BackupRepository, BackupStatus, Manifest
from tests.support.monitoring import RULES, alerts, exported_names, prometheus, used_names
from tests.support.trees import make_tree


def test_every_metric_of_the_rules_and_the_dashboard_is_exported(stack: Stack) -> None:
    assert stack.shim_url
    exported = exported_names(httpx.get(f"{stack.shim_url}/metrics", timeout=30).text)
    used = used_names()
    assert len(used) >= 15 and all(used.values())  # 5 alerts, 11 panels, each naming some
    missing = {where: names - exported for where, names in used.items() if names - exported}
    assert not missing, missing
    # And the comparison can fail: a name no family stands for.
    assert "mm_jobs_finished_seconds" not in exported and "mm_jobs_finished_total" in exported


def _sample(exposition: str, name: str, **labels: str) -> float:
    wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in exposition.splitlines():
        if line.startswith(name + "{"):
            found = ",".join(sorted(line[len(name) + 1 : line.index("}")].split(",")))
            if found == wanted:
                return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_a_job_that_ends_is_counted_once_with_its_duration(
    stack, target, inventory, run_job, wait_for_final_state, tmp_path
):
    assert stack.shim_url
    metrics = f"{stack.shim_url}/metrics"
    labels = {"queue": "backup", "job_type": "backup:manual"}
    before = httpx.get(metrics, timeout=30).text
    server_id = inventory.add_server(target, backup={"paths": [str(make_tree(tmp_path / "s"))]})
    parameters = {"server_id": str(server_id), "job_type": "backup:manual"}
    run = wait_for_final_state(run_job("backup/backup", parameters))
    assert run.state.is_completed(), run.state.message
    # Read SETTLE (10 s) after its end at the soonest; scrapes meanwhile count it once.
    deadline = time.monotonic() + 60
    while True:
        after = httpx.get(metrics, timeout=30).text
        done = _sample(after, "mm_jobs_finished_total", **labels, state="completed")
        if done > _sample(before, "mm_jobs_finished_total", **labels, state="completed"):
            break
        counted = [line for line in after.splitlines() if line.startswith("mm_jobs_finished")]
        assert time.monotonic() < deadline, f"the ended backup was never counted: {counted}"
        time.sleep(1)
    time.sleep(2)
    again = httpx.get(metrics, timeout=30).text
    assert _sample(again, "mm_jobs_finished_total", **labels, state="completed") == done
    count = "mm_job_duration_seconds_count"
    assert _sample(again, count, job_type="backup:manual") > _sample(
        before, count, job_type="backup:manual"
    )
    # The last completed backup's gauges of this server.
    server = {"server_id": str(server_id), "server": f"test-{str(server_id)[:8]}"}
    assert _sample(again, "mm_backup_last_completed_size_bytes", **server) > 3_000_000
    assert (
        _sample(again, "mm_backup_last_completed_timestamp_seconds", **server) > time.time() - 120
    )


@pytest.fixture
def watching_shim(stack: Stack, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A second API process on the session's Prefect and repository, with an inventory of its
    own (one minutely schedule that no Prefect deployment runs) and a grace of 1 s: the
    `* * * * *` server may be 61 s old. Yields its host:port and that inventory's path."""
    port = free_port()
    private = tmp_path / "inventory.yaml"
    write_atomic(private, b"servers: []\n")
    env = {
        **stack.environment(),
        "MM_INVENTORY": str(private),
        "MM_NOTIFY_STALE_GRACE_SECONDS": "1",
        "MM_JWT_SECRET": uuid.uuid4().hex * 2,
    }
    argv = [sys.executable, "-m", "uvicorn", "api_shim.app:app", "--port", str(port)]
    log = open(tmp_path / "shim.log", "wb")
    process = subprocess.Popen(argv, env=env, cwd=PROJECT_DIR, stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5)
                break
            except httpx.TransportError:
                assert process.poll() is None, (tmp_path / "shim.log").read_text()
                assert time.monotonic() < deadline, "the shim did not start"
                time.sleep(0.2)
        yield f"127.0.0.1:{port}", private
    finally:
        process.terminate()
        process.wait(15)
        log.close()


def _firing(url: str, alert: str, server_id: uuid.UUID) -> bool:
    return any(
        a["labels"].get("alertname") == alert
        and a["labels"].get("server_id") == str(server_id)
        and a["state"] == "firing"
        for a in alerts(url)
    )


def _wait(what: str, check: Callable[[], bool], timeout: float) -> float:
    began = time.monotonic()
    while not check():
        assert time.monotonic() - began < timeout, f"{what}: not within {timeout} s"
        time.sleep(0.5)
    return time.monotonic() - began


@pytest.mark.slow
def test_prometheus_fires_the_stale_backup_alerts_and_clears_them(
    stack, target, inventory, run_job, wait_for_final_state, watching_shim, tmp_path
):
    shim, private = watching_shim
    source = make_tree(tmp_path / "source", big_bytes=10_000)
    server_id = inventory.add_server(target, backup={"paths": [str(source)]})
    # The same server, scheduled every minute, in the inventory the watching shim reads.
    [entry] = [s for s in inventory.servers() if s["id"] == str(server_id)]
    scheduled: dict[str, Any] = {**entry, "backup": {**entry["backup"], "schedule": "* * * * *"}}
    write_atomic(private, yaml.safe_dump({"servers": [scheduled]}).encode())

    def backup() -> None:
        run = wait_for_final_state(run_job("backup/backup", {"server_id": str(server_id)}))
        assert run.state.is_completed(), run.state.message

    with prometheus(shim, RULES, tmp_path) as url:
        # Scheduled and never backed up: alertable at once.
        _wait(
            "never completed firing", lambda: _firing(url, "MMBackupNeverCompleted", server_id), 30
        )
        assert not _firing(url, "MMBackupTooOld", server_id)
        backup()
        _wait(
            "never completed cleared",
            lambda: not _firing(url, "MMBackupNeverCompleted", server_id),
            15,
        )
        assert not _firing(url, "MMBackupTooOld", server_id)
        # 61 s after the backup's end it is older than allowed; not before.
        stale_after = _wait("too old firing", lambda: _firing(url, "MMBackupTooOld", server_id), 90)
        assert stale_after > 30, stale_after
        backup()
        _wait("too old cleared", lambda: not _firing(url, "MMBackupTooOld", server_id), 15)
        # The rules Prometheus loaded are the shipped file's, all of them.
        rules = httpx.get(f"{url}/api/v1/rules", timeout=5).json()["data"]["groups"]
        assert sum(len(g["rules"]) for g in rules) == 5


@pytest.mark.slow
def test_a_scrape_counts_many_ended_runs_once_over_several_pages(stack, tmp_path):
    """200 servers' repositories and 450 runs ended at once (three pages of the job counters'
    read) are counted once. Prints the times docs/DESIGN.md quotes; they are figures, not
    asserted (a timed test fails on a loaded machine, and proves nothing on an idle one)."""
    assert stack.shim_url
    repo = BackupRepository(stack.backup_root)
    now = datetime.now(UTC)
    servers = [uuid.uuid4() for _ in range(200)]
    for server_id in servers:
        backup_id = uuid.uuid4()
        repo.save(
            Manifest(
                backup_id=backup_id,
                server_id=server_id,
                server_name="many",
                job_type="backup:manual",
                paths=["/srv"],
                archive=BackupRepository.archive_name(backup_id, "none"),
                started_at=now - timedelta(minutes=1),
                finished_at=now,
                size=1,
                status=BackupStatus.COMPLETED,
            )
        )

    created: list[uuid.UUID] = []

    # A few requests at a time (one after another, the 450 creates took most of a minute); a
    # gate per event loop, as each asyncio.run has its own.
    async def create(n: int) -> None:
        gate = asyncio.Semaphore(6)
        async with stack.client() as client:
            deployment = await client.read_deployment_by_name("scan/scan")

            async def one() -> None:
                async with gate:
                    run = await client.create_flow_run_from_deployment(
                        deployment.id,
                        parameters={"server_id": str(uuid.uuid4()), "job_type": "scan:quick"},
                        state=Completed(),
                    )
                created.append(run.id)

            await asyncio.gather(*(one() for _ in range(n)))

    async def delete() -> None:
        gate = asyncio.Semaphore(6)
        async with stack.client() as client:

            async def one(run_id: uuid.UUID) -> None:
                async with gate:
                    await client.delete_flow_run(run_id)

            await asyncio.gather(*(one(run_id) for run_id in created))

    try:
        _measure(stack.shim_url, lambda: asyncio.run(create(450)))
    finally:
        # Other tests of the session count jobs and check every archive: leave theirs alone.
        asyncio.run(delete())
        for server_id in servers:
            shutil.rmtree(repo.server_dir(server_id))


def _measure(shim_url: str, create: Callable[[], None]) -> None:
    """Scrape before `create` makes 450 ended runs, then time four scrapes after SETTLE."""
    metrics = f"{shim_url}/metrics"
    labels = {"queue": "scan", "job_type": "scan:quick", "state": "completed"}
    first = httpx.get(metrics, timeout=30).text
    before = _sample(first, "mm_jobs_finished_total", **labels)
    create()
    time.sleep(11)  # SETTLE: the runs are read from 10 s after their end
    timings = []
    for _ in range(4):
        began = time.perf_counter()
        text = httpx.get(metrics, timeout=30).text
        timings.append(time.perf_counter() - began)
    print(
        f"/metrics with 450 new runs and 200+ servers: first {timings[0]:.3f} s, then "
        + ", ".join(f"{t:.3f}" for t in timings[1:])
    )
    reads = {"operation": "read_finished_runs"}
    spent = [
        _sample(t, f"mm_prefect_call_seconds_{part}", **reads)
        for t in (first, text)
        for part in ("sum", "count")
    ]
    print(
        f"the counters' reads meanwhile: {spent[3] - spent[1]:.0f} pages in "
        f"{spent[2] - spent[0]:.3f} s"
    )
    assert _sample(text, "mm_jobs_finished_total", **labels) - before == 450
