"""Retention of job records on 5,000 synthetic flow runs, on a Prefect server of its own."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from bench.api_100k import FMT, deployment_targets, seed
from deployments.system.local_target import free_port
from deployments.system.stack import Stack
from tasks.job_records import JobRetention, clean_job_records

RUNS = 5000
#: Small enough that the count rule deletes some completed runs of every pool too.
KEEP = 200


@pytest.fixture(scope="module")
def lone_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A Prefect server and bootstrap without workers: the session stack's runs stay untouched."""
    stack = Stack(
        tmp_path_factory.mktemp("retention"),
        port=free_port(),
        api_port=None,
        ui=False,
        # No maintenance or check schedule: the scheduler would add their upcoming runs
        # mid-test.
        extra_env={"MM_MAINTENANCE_CRON": "", "MM_CHECK_CRON": ""},
    )
    try:
        stack.start_server()
        asyncio.run(stack._ensure_pools())
        stack.bootstrap()
        yield stack
    finally:
        stack.stop()


def expected_survivors(db: Path, policy: JobRetention) -> set[str]:
    """The documented rule, computed straight from the database rows."""
    now = datetime.now(UTC).replace(tzinfo=None)
    with sqlite3.connect(db) as conn:
        rows = conn.execute(
            "SELECT flow_run.id, state_type, end_time, work_pool.name FROM flow_run"
            " JOIN work_queue ON flow_run.work_queue_id = work_queue.id"
            " JOIN work_pool ON work_queue.work_pool_id = work_pool.id"
        ).fetchall()
    keep: set[str] = set()
    recent_completed: dict[str, list[tuple[datetime, str]]] = {}
    for run_id, state, end, pool in rows:
        ended = datetime.strptime(end, FMT) if end else None
        if state == "COMPLETED":
            assert ended is not None
            if ended >= now - policy.completed_age:
                recent_completed.setdefault(pool, []).append((ended, run_id))
        elif state in ("FAILED", "CRASHED"):
            assert ended is not None
            if ended >= now - policy.failed_age:
                keep.add(run_id)
        else:
            keep.add(run_id)  # not final, or cancelled: never cleaned
    for runs in recent_completed.values():
        keep.update(run_id for _, run_id in sorted(runs, reverse=True)[: policy.completed_count])
    return keep


def test_clean_keeps_exactly_the_documented_runs(lone_server: Stack) -> None:
    """Seed 5,000 runs over 12 days in all states, then clean with 7 days / keep 200 per queue.

    Breaks: nothing; checks the rule. Must survive: exactly the runs the documented rule keeps
    (recent completed up to the newest 200 per pool, recent failed/crashed, every run not yet
    final or cancelled); everything else is gone, in bulk calls of at most 50. A dry run before
    deletes nothing and counts exactly what the real one then deletes, per pool.
    """
    db = lone_server.prefect_home / "prefect.db"
    targets = asyncio.run(deployment_targets(lone_server))
    seed(db, targets, RUNS, days=12)
    policy = JobRetention(completed_count=KEEP)
    want = expected_survivors(db, policy)
    assert 0 < len(want) < RUNS

    async def clean(dry_run: bool) -> dict[str, int]:
        async with lone_server.client() as client:
            return await clean_job_records(client, policy, dry_run=dry_run)

    counted = asyncio.run(clean(dry_run=True))
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT count(*) FROM flow_run").fetchone() == (RUNS,)
    deleted = asyncio.run(clean(dry_run=False))
    with sqlite3.connect(db) as conn:
        left = {row[0] for row in conn.execute("SELECT id FROM flow_run")}
    assert counted == deleted
    assert sum(deleted.values()) == RUNS - len(want)
    assert left == want, (len(left), len(want))
