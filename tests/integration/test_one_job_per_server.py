"""One job that changes a server at a time (tasks/server_slot.py): a backup and an update of
one server enqueued together take turns on it, and a scan of it runs beside them.

Breaks: the backup's pre command and the update each take seconds, and both are enqueued at
once (two pools, two workers: nothing else keeps them apart). Must survive: on the server,
their commands' periods never overlap; the scan ends while the backup holds the server; the
server's limit is in Prefect (the UI's global concurrency limits) with no slot left held.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from tasks.core.inventory import load_inventory
from tasks.server_slot import slot_name
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
