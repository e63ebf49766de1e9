"""Scans and updates through their pools, a real worker and a real sshd, end to end."""

from __future__ import annotations

import json
import os
import uuid

from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

from tests.support.runs import log_lines, task_run_named


def test_full_scan_stores_results_and_shows_a_table(
    stack, target, inventory, run_job, wait_for_final_state
):
    server_id = inventory.add_server(target)
    scan_id = uuid.uuid4()

    run = wait_for_final_state(
        run_job("scan/scan", {"server_id": str(server_id), "scan_id": str(scan_id)})
    )

    assert run.state.is_completed(), run.state.message
    record = json.loads(
        (stack.results_root / "scans" / str(server_id) / f"{scan_id}.json").read_text()
    )
    assert record["status"] == "completed"
    assert record["jobId"] == str(run.id)
    results = record["results"]
    assert set(results) == {
        "system",
        "os",
        "kernel",
        "cpu",
        "memory",
        "disks",
        "docker",
        "services",
    }
    assert results["system"]["uptimeSeconds"] > 0
    assert results["kernel"]["release"] == os.uname().release
    assert results["cpu"]["cores"] >= 1
    assert results["memory"]["totalBytes"] > 0
    assert any(disk["mount"] == "/" for disk in results["disks"])
    with stack.sync_client() as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[f"scan-{server_id}"]))
        )
    assert [a.flow_run_id for a in artifacts] == [run.id]
    rows = json.loads(artifacts[0].data)
    assert {"item": "kernel", "value": results["system"]["kernel"]} in rows


def test_quick_scan_reports_uptime_and_os(stack, target, inventory, run_job, wait_for_final_state):
    server_id = inventory.add_server(target)

    run = wait_for_final_state(
        run_job("scan/scan", {"server_id": str(server_id), "job_type": "scan:quick"})
    )

    assert run.state.is_completed(), run.state.message
    (path,) = (stack.results_root / "scans" / str(server_id)).iterdir()
    results = json.loads(path.read_text())["results"]
    assert set(results) == {"system"}
    assert results["system"]["os"]
    assert results["system"]["uptimeSeconds"] > 0


def test_unknown_server_fails_at_once(stack, run_job, wait_for_final_state):
    unknown = uuid.uuid4()

    run = wait_for_final_state(run_job("scan/scan", {"server_id": str(unknown)}))

    assert run.state.is_failed()
    assert f"no server with id {unknown}" in (run.state.message or "")


def test_update_streams_its_output_into_the_flow_run_log(
    stack, target, inventory, run_job, wait_for_final_state
):
    server_id = inventory.add_server(
        target, update={"command": "echo upgrading-packages; echo 'a warning' >&2"}
    )

    run = wait_for_final_state(run_job("update/update", {"server_id": str(server_id)}))

    assert run.state.is_completed(), run.state.message
    with stack.sync_client() as client:
        lines = log_lines(client, run.id, expect="upgrading-packages")
    assert "upgrading-packages" in lines
    assert "a warning" in lines
    (record_path,) = (stack.results_root / "updates" / str(server_id)).glob("*.json")
    record = json.loads(record_path.read_text())
    assert record["status"] == "completed"
    assert record["exitStatus"] == 0
    log = record_path.with_suffix(".log").read_text()
    assert "stdout: upgrading-packages" in log


def test_failed_update_reports_exit_status_and_records_stderr_tail_without_retry(
    stack, target, inventory, run_job, wait_for_final_state
):
    server_id = inventory.add_server(
        target, update={"command": "echo step-one; echo 'E: dpkg was interrupted' >&2; exit 7"}
    )

    run = wait_for_final_state(run_job("update/update", {"server_id": str(server_id)}))

    assert run.state.is_failed()
    message = run.state.message or ""
    assert "the update command exited with status 7" in message
    # The command's output is for admins (the API's failedReason for them) and the record.
    assert "E: dpkg was interrupted" not in message
    with stack.sync_client() as client:
        assert task_run_named(client, run.id, "run update").run_count == 1
    (record_path,) = (stack.results_root / "updates" / str(server_id)).glob("*.json")
    record = json.loads(record_path.read_text())
    assert record["status"] == "failed"
    assert record["exitStatus"] == 7
    assert "dpkg was interrupted" in record["stderrTail"]


def test_an_update_that_outlives_its_timeout_ran_once_and_the_job_says_why(
    stack, target, inventory, run_job, wait_for_final_state, tmp_path
):
    """Breaks: the update command is still running when its timeout ends the wait. Must
    survive: it is not sent again (it may still be doing its work), and the job says so."""
    counter = tmp_path / "update-ran"
    server_id = inventory.add_server(
        target, update={"command": f"echo ran >> {counter}; sleep 15", "timeout": 2}
    )

    run = wait_for_final_state(run_job("update/update", {"server_id": str(server_id)}))

    assert run.state.is_failed(), run.state
    assert "may still be running there" in (run.state.message or "")
    with stack.sync_client() as client:
        assert task_run_named(client, run.id, "run update").run_count == 1
    assert counter.read_text() == "ran\n"
    (record_path,) = (stack.results_root / "updates" / str(server_id)).glob("*.json")
    record = json.loads(record_path.read_text())
    assert record["status"] == "failed" and record["commandStartedAt"] is not None
