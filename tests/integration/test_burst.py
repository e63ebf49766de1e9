"""A burst through the API on the embedded default (SQLite): quick scans, backups and updates
POSTed at once from 10 clients. Every job ends Completed, none Crashed, no answer is a 5xx, and
the state history never shows more than 5 scans, 2 backups or 1 update Running at once (the
pools' limits, held by the deployments' concurrency limits on the server).

bench/burst.py runs the same burst in rounds alternating with Prefect's own create_flow_run
and reports the latencies.
"""

from __future__ import annotations

import time
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from deployments.control.queues import QUEUES_BY_NAME
from deployments.system.local_target import LocalTarget
from deployments.system.stack import Stack
from tasks.core.callers import mint_token
from tests.integration.conftest import InventoryFile
from tests.support.burst import (
    Latency,
    burst_plan,
    final_states,
    post_burst,
    read_history,
    wait_final,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1500)]

#: Quick scans, backups and updates per `--burst`. `full`, the default and CI's, is issue 7's
#: burst (bench/burst.py's rounds): 166 s on 2026-12-01 (~140 quick scans a minute),
#: ~8 minutes on a machine twice as slow. `sixth` is still 10, 5 and 2 times the pools' limits,
#: for a quicker run on a slow machine.
BURSTS = {"full": (300, 60, 6), "sixth": (50, 10, 2)}
CLIENTS = 10


def tiny_source(root: Path) -> Path:
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "app.conf").write_text("answer = 42\n" * 50)
    (root / "data.bin").write_bytes(bytes(range(256)) * 40)
    return root


def test_a_burst_of_jobs_all_complete_within_the_limits(
    pytestconfig: pytest.Config,
    stack: Stack,
    target: LocalTarget,
    inventory: InventoryFile,
    tmp_path: Path,
):
    scans, backups, updates = BURSTS[pytestconfig.getoption("--burst")]
    source = tiny_source(tmp_path / "source")
    user = f"burst-{uuid.uuid4().hex[:6]}"
    mine = {"owners": [user]}
    scan_ids = [inventory.add_server(target, **mine) for _ in range(10)]
    backup_ids = [
        inventory.add_server(target, backup={"paths": [str(source)]}, **mine) for _ in range(10)
    ]
    update_ids = [
        inventory.add_server(target, update={"command": "true"}, **mine) for _ in range(2)
    ]
    plan = burst_plan(
        scan_ids, backup_ids, update_ids, scans=scans, backups=backups, updates=updates
    )
    assert stack.shim_url and stack.jwt_secret
    token = mint_token(stack.jwt_secret, user, "user")

    began_at, began = datetime.now(UTC), time.monotonic()
    # As fast as 10 clients go: the shim answers each once Prefect has stored the run.
    answers = post_burst(stack.shim_url, token, plan, clients=CLIENTS, spread=0.0)
    posted = time.monotonic() - began
    statuses = Counter(a.status for a in answers)
    assert statuses == {202: len(plan)}, sorted({(a.status, a.message) for a in answers})

    ids = [a.job_id for a in answers if a.job_id is not None]
    with stack.sync_client() as client:
        runs = wait_final(client, ids, timeout=1200, poll=2.0)
        ended = time.monotonic() - began
        # A minute of margin: a run of an earlier test still Running counts against the limit.
        history = read_history(client, began_at - timedelta(minutes=1))
    finals = final_states(runs)
    latency = Latency.of(answers)
    peaks = history.peaks()
    print(
        f"\nburst: {len(plan)} POSTs in {posted:.1f} s (p50 {latency.p50 * 1000:.0f} ms, "
        f"p95 {latency.p95 * 1000:.0f} ms, max {latency.max * 1000:.0f} ms); all ended after "
        f"{ended:.0f} s; {dict(finals)}; most Running at once {peaks}; "
        f"sent back by a deployment limit: {history.sent_back()}"
    )

    assert finals == {"Completed": len(plan)}, finals
    for pool, queue in QUEUES_BY_NAME.items():
        assert peaks.get(f"pool:{pool}", 0) <= queue.concurrency, (pool, peaks)
    # The burst used every slot it was allowed: the limits held by being reached, not by luck.
    assert peaks["pool:scan"] == 5 and peaks["pool:backup"] == 2 and peaks["pool:update"] == 1
