"""A caller of the Prefect API cannot choose what a run executes, on either worker type.

Breaks: a flow run created with job variables that override the command (a shell writing a
marker), the environment (PYTHONPATH to a sitecustomize writing one) and the working directory
(a `flows` package there writing one). Must survive: no marker is written, and the run ends
Failed, once, saying why.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from prefect.client.schemas.objects import StateType

from deployments.control.catalogue import SCAN
from deployments.system.stack import FORKSERVER, Stack

#: The stock worker is Prefect's; ours is the stack's default.
STOCK = "process"


@pytest.fixture(params=[FORKSERVER, STOCK])
def scan_worker(request: pytest.FixtureRequest, stack: Stack) -> Iterator[str]:
    """The scan pool served by one worker of each type in turn (the stack's is put back)."""
    worker_type: str = request.param
    if worker_type == stack.worker_type:
        yield worker_type
        return
    stack.stop_worker("scan")
    try:
        stack.start_worker("scan", worker_type=worker_type)
        yield worker_type
    finally:
        stack.stop_worker("scan")
        stack.start_worker("scan")


def _writes_marker(path: Path, marker: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"import pathlib\npathlib.Path({str(marker)!r}).touch()\n")


def test_a_run_with_command_env_or_working_dir_runs_none_of_them_and_fails(
    stack: Stack, target, inventory, wait_for_final_state, scan_worker: str, tmp_path: Path
) -> None:
    server_id = inventory.add_server(target)
    markers = {name: tmp_path / f"{name}.marker" for name in ("command", "env", "working_dir")}
    _writes_marker(tmp_path / "pythonpath" / "sitecustomize.py", markers["env"])
    elsewhere = tmp_path / "elsewhere"
    _writes_marker(elsewhere / "flows" / "__init__.py", markers["working_dir"])
    _writes_marker(elsewhere / "flows" / "scan.py", markers["working_dir"])
    job_variables = {
        "command": f"sh -c 'touch {markers['command']}'",
        "env": {"PYTHONPATH": str(tmp_path / "pythonpath")},
        "working_dir": str(elsewhere),
    }
    with stack.sync_client() as client:
        deployment = client.read_deployment_by_name(SCAN.full_name)
        created = client.create_flow_run_from_deployment(
            deployment.id,
            parameters={"server_id": str(server_id), "job_type": "scan:quick"},
            job_variables=job_variables,
        )
    run = wait_for_final_state(created.id, timeout=90)
    assert run.state is not None and run.state.type is StateType.FAILED, run.state
    assert (
        "refused: job variables command, env, working_dir are not accepted for this deployment"
        " (they would choose what the worker runs)"
    ) in (run.state.message or ""), run.state.message
    assert run.run_count == 1
    assert [name for name, marker in markers.items() if marker.exists()] == []
