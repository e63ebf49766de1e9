"""Integration tests: the session's services (tests/support/session.py, fixtures of every tier
through tests/conftest.py), markers by the services a test uses, and helpers to run jobs."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any
from uuid import UUID

import pytest
from prefect.client.schemas.objects import FlowRun

from deployments.system.stack import Stack
from tests.support.session import (
    CHECK_CRON,
    LOCK,
    MAINTENANCE_CRON,
    SCHEDULED_CRON,
    SCHEDULED_SERVER_ID,
    SCHEDULED_TIMEZONE,
    InventoryFile,
)

__all__ = [
    "CHECK_CRON",
    "LOCK",
    "MAINTENANCE_CRON",
    "SCHEDULED_CRON",
    "SCHEDULED_SERVER_ID",
    "SCHEDULED_TIMEZONE",
    "InventoryFile",
]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark tests by the services they use, so `-m 'not sshd'` and the like select correctly.

    Tests marked `scaled` run only with `--stack-mode=scaled` (`make test` runs both modes).
    """
    if config.getoption("--stack-mode") != "scaled":
        deselected = [item for item in items if item.get_closest_marker("scaled")]
        if deselected:
            config.hook.pytest_deselected(items=deselected)
            items[:] = [item for item in items if not item.get_closest_marker("scaled")]
    for item in items:
        fixtures = getattr(item, "fixturenames", ())
        if {"stack", "run_job", "wait_for_final_state"} & set(fixtures):
            item.add_marker(pytest.mark.prefect)
        if "target" in fixtures:
            item.add_marker(pytest.mark.sshd)


@pytest.fixture
def run_job(stack: Stack) -> Callable[..., UUID]:
    """`run_job(deployment_full_name, parameters, work_queue_name=None) -> flow_run_id`."""

    def run(
        deployment_full_name: str,
        parameters: dict[str, Any],
        work_queue_name: str | None = None,
    ) -> UUID:
        with stack.sync_client() as client:
            deployment = client.read_deployment_by_name(deployment_full_name)
            flow_run = client.create_flow_run_from_deployment(
                deployment.id, parameters=parameters, work_queue_name=work_queue_name
            )
        return flow_run.id

    return run


@pytest.fixture
def wait_for_final_state(stack: Stack) -> Callable[..., FlowRun]:
    """`wait_for_final_state(flow_run_id, timeout=120) -> FlowRun`, polling; fails on timeout."""

    def wait(flow_run_id: UUID, timeout: float = 120.0, poll: float = 0.25) -> FlowRun:
        deadline = time.monotonic() + timeout
        with stack.sync_client() as client:
            while True:
                flow_run = client.read_flow_run(flow_run_id)
                if flow_run.state is not None and flow_run.state.is_final():
                    return flow_run
                if time.monotonic() > deadline:
                    state = flow_run.state.name if flow_run.state else None
                    logs = "\n".join(
                        f"--- {child.log_path}\n{child.log_tail(1500)}"
                        for child in stack.worker_processes()
                    )
                    pytest.fail(
                        f"flow run {flow_run_id} still {state} after {timeout} s\n{logs}",
                        pytrace=False,
                    )
                time.sleep(poll)

    return wait
