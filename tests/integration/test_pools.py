"""The pool limits hold: with three times as many jobs as slots, never more than 2/5/1 at once.

In scaled mode (`--stack-mode=scaled`) each pool has two workers on two "hosts", so the limit
must hold across workers, as the server enforces it, not only within one worker's `--limit`.
"""

from __future__ import annotations

import uuid
from collections import defaultdict

from prefect.client.schemas.objects import StateType

from deployments.control.queues import QUEUES_BY_NAME
from tests.support.runs import max_overlap, running_interval
from tests.support.trees import make_tree


def test_no_pool_ever_runs_more_than_its_limit(
    stack, target, inventory, run_job, wait_for_final_state, tmp_path
):
    source = make_tree(tmp_path / "source", big_bytes=1000)

    def server() -> str:
        # Each job holds its slot a little, so the runs of a pool overlap if the limit lets
        # them. A server of its own per job: one server's backups and updates take turns
        # (tasks/server_slot.py), which would hide the pool's limit behind the server's.
        return str(
            inventory.add_server(
                target,
                backup={"paths": [str(source)], "pre": "sleep 1"},
                update={"command": "sleep 1"},
            )
        )

    jobs = {
        "backup/backup": 3 * QUEUES_BY_NAME["backup"].concurrency,
        "scan/scan": 3 * QUEUES_BY_NAME["scan"].concurrency,
        "update/update": 3 * QUEUES_BY_NAME["update"].concurrency,
    }
    runs: dict[str, list[uuid.UUID]] = defaultdict(list)
    for deployment, count in jobs.items():
        for _ in range(count):
            parameters = {"server_id": server()}
            if deployment == "scan/scan":
                parameters["job_type"] = "scan:quick"
            runs[deployment.split("/")[0]].append(run_job(deployment, parameters))

    finished = {
        pool: [wait_for_final_state(run_id, timeout=420) for run_id in ids]
        for pool, ids in runs.items()
    }

    with stack.sync_client() as client:
        for pool, flow_runs in finished.items():
            assert all(run.state.is_completed() for run in flow_runs), [
                (run.id, run.state.name, run.state.message) for run in flow_runs
            ]
            histories = [client.read_flow_run_states(run.id) for run in flow_runs]
            # Every job ran exactly once, on one worker (with two per pool in scaled mode).
            assert [run.run_count for run in flow_runs] == [1] * len(flow_runs)
            assert all(
                [s.type for s in states].count(StateType.RUNNING) == 1 for states in histories
            ), [[s.name for s in states] for states in histories]
            spans = [running_interval(states) for states in histories]
            peak = max_overlap(spans)
            limit = QUEUES_BY_NAME[pool].concurrency
            assert peak <= limit, f"{pool}: {peak} runs at once, limit {limit}"
            # Concurrency is used, not just capped: the pool ran jobs side by side.
            assert peak >= min(2, limit), f"{pool}: never more than {peak} at once"
