"""The stack comes up as the queue table and prefect.yaml say, and bootstrapping is idempotent."""

from __future__ import annotations

import subprocess
import sys
from typing import Any
from uuid import UUID

import pytest
from prefect.client.orchestration import SyncPrefectClient
from prefect.client.schemas.actions import DeploymentUpdate, WorkPoolUpdate
from prefect.client.schemas.filters import (
    DeploymentFilter,
    DeploymentFilterId,
    FlowRunFilter,
    FlowRunFilterState,
    FlowRunFilterStateType,
)
from prefect.client.schemas.objects import FlowRun, StateType
from prefect.workers.process import ProcessWorker

from deployments.control.bootstrap import schedule_slug
from deployments.control.catalogue import ALL_DEPLOYMENTS, BACKUP, UPDATE, Deployment
from deployments.control.job_template import base_job_template
from deployments.control.queues import QUEUES, Priority, Queue
from deployments.system.stack import Stack
from tests.integration.conftest import (
    SCHEDULED_CRON,
    SCHEDULED_SERVER_ID,
    SCHEDULED_TIMEZONE,
    InventoryFile,
)


def snapshot(client: SyncPrefectClient) -> dict[str, Any]:
    """What the bootstrap manages, with ids, so a second run can be compared to the first."""
    state: dict[str, Any] = {}
    for queue in QUEUES:
        pool = client.read_work_pool(queue.name)
        state[f"pool:{queue.name}"] = (pool.id, pool.concurrency_limit, pool.base_job_template)
        for wq in client.read_work_queues(work_pool_name=queue.name):
            state[f"queue:{queue.name}/{wq.name}"] = (wq.id, wq.priority, wq.is_paused)
    for deployment in ALL_DEPLOYMENTS:
        d = client.read_deployment_by_name(deployment.full_name)
        state[f"deployment:{deployment.full_name}"] = (
            d.id,
            d.work_pool_name,
            d.work_queue_name,
            d.entrypoint,
            d.pull_steps,
            d.job_variables,
            sorted(d.tags),
            d.parameter_openapi_schema,
            d.enforce_parameter_schema,
            d.paused,
        )
        state[f"schedules:{deployment.full_name}"] = sorted(
            (s.slug or "", str(s.id), repr(s.schedule), s.active, s.parameters)
            for s in client.read_deployment_schedules(d.id)
        )
    return state


@pytest.mark.parametrize("queue", QUEUES, ids=lambda q: q.name)
def test_pool_has_its_limit_and_priority_queues(stack: Stack, queue: Queue) -> None:
    with stack.sync_client() as client:
        pool = client.read_work_pool(queue.name)
        queues = {q.name: q.priority for q in client.read_work_queues(work_pool_name=queue.name)}
    assert pool.type == "process"
    assert pool.concurrency_limit == queue.concurrency
    # Ours, with every value fixed: no run chooses its command, env or working directory.
    assert pool.base_job_template == base_job_template(stack.project_dir)
    assert {name: queues[name] for name in ("critical", "high", "normal", "low")} == {
        "critical": 1,
        "high": 2,
        "normal": 3,
        "low": 4,
    }
    assert {p.queue_name: int(p) for p in Priority}.items() <= queues.items()


def test_pool_limits_are_the_designs(stack: Stack) -> None:
    with stack.sync_client() as client:
        limits = {q.name: client.read_work_pool(q.name).concurrency_limit for q in QUEUES}
    assert limits == {"backup": 2, "scan": 5, "update": 1}


@pytest.mark.parametrize("deployment", ALL_DEPLOYMENTS, ids=lambda d: d.name)
def test_deployment_is_as_prefect_yaml_says(stack: Stack, deployment: Deployment) -> None:
    with stack.sync_client() as client:
        d = client.read_deployment_by_name(deployment.full_name)
    assert d.work_pool_name == deployment.queue.name
    assert d.work_queue_name == deployment.priority.queue_name
    assert d.entrypoint == deployment.entrypoint
    assert "medicine-man" in d.tags
    # No pull step, no job variables: runs start in the directory the pool's template fixes.
    assert not d.pull_steps
    assert not d.job_variables


def test_every_worker_is_registered(stack: Stack) -> None:
    with stack.sync_client() as client:
        for queue in QUEUES:
            names = {w.name for w in client.read_workers_for_work_pool(queue.name)}
            assert stack.worker_name(queue.name) in names


def test_backup_schedule_comes_from_the_inventory(stack: Stack) -> None:
    with stack.sync_client() as client:
        deployment = client.read_deployment_by_name(BACKUP.full_name)
        schedules = {s.slug: s for s in client.read_deployment_schedules(deployment.id)}
    schedule = schedules[schedule_slug(SCHEDULED_SERVER_ID)]
    assert schedule.schedule.cron == SCHEDULED_CRON  # type: ignore[union-attr]
    assert schedule.schedule.timezone == SCHEDULED_TIMEZONE  # type: ignore[union-attr]
    assert schedule.parameters == {
        "server_id": str(SCHEDULED_SERVER_ID),
        "job_type": "backup:scheduled",
    }
    assert schedule.active


def test_bootstrap_again_changes_nothing_but_takes_back_what_the_api_changed(
    stack: Stack,
) -> None:
    """Idempotent, and the pools' template is ours and the deployments' job variables are
    prefect.yaml's (none): what a caller of the API changed there, the next bootstrap undoes."""
    with stack.sync_client() as client:
        before = snapshot(client)
        client.update_work_pool(
            "update",
            WorkPoolUpdate(base_job_template=ProcessWorker.get_default_base_job_template()),
        )
        deployment = client.read_deployment_by_name(UPDATE.full_name)
        client.update_deployment(
            deployment.id, DeploymentUpdate(job_variables={"command": "sh -c id"})
        )
        assert snapshot(client) != before  # Both changes took.
    stack.bootstrap()
    with stack.sync_client() as client:
        after = snapshot(client)
    assert after == before


def test_bootstrap_follows_inventory_changes(stack: Stack, inventory: InventoryFile) -> None:
    added = inventory.add_server(
        host="127.0.0.1",
        username="nobody",
        private_key_file="/nonexistent/id_ed25519",
        backup={"paths": ["/srv"], "schedule": "30 2 1 1 *"},
    )
    slug = schedule_slug(added)
    try:
        stack.bootstrap()
        with stack.sync_client() as client:
            deployment_id = client.read_deployment_by_name(BACKUP.full_name).id
            schedules = {s.slug: s for s in client.read_deployment_schedules(deployment_id)}
            assert schedules[slug].schedule.cron == "30 2 1 1 *"  # type: ignore[union-attr]
            assert schedules[slug].schedule.timezone == "UTC"  # type: ignore[union-attr]
            assert list(schedules).count(slug) == 1
    finally:
        inventory.remove(added)
    stack.bootstrap()
    with stack.sync_client() as client:
        slugs = [s.slug for s in client.read_deployment_schedules(deployment_id)]
    assert slug not in slugs
    assert schedule_slug(SCHEDULED_SERVER_ID) in slugs


def _scheduled_runs(client: SyncPrefectClient, server_id: UUID) -> list[FlowRun]:
    deployment = client.read_deployment_by_name(BACKUP.full_name)
    runs = client.read_flow_runs(
        deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment.id])),
        flow_run_filter=FlowRunFilter(
            state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.SCHEDULED]))
        ),
    )
    return [r for r in runs if r.parameters.get("server_id") == str(server_id)]


def test_a_schedule_shows_its_next_run_as_one_delayed_job(
    stack: Stack, inventory: InventoryFile
) -> None:
    """Prefect's scheduler keeps 3 runs ahead by default (a daily backup showed 3 delayed
    jobs); the stack's settings keep the next one (deployments/system/prefect_server.py)."""
    added = inventory.add_server(
        host="127.0.0.1",
        username="nobody",
        private_key_file="/nonexistent/id_ed25519",
        backup={"paths": ["/srv"], "schedule": "30 2 * * *"},
    )
    try:
        stack.bootstrap()
        with stack.sync_client() as client:
            # What the scheduler service does at its next loop (up to a minute away), at once:
            # the same function, with the same settings (none given here), and idempotent.
            deployment = client.read_deployment_by_name(BACKUP.full_name)
            answer = client.request(
                "POST", "/deployments/{id}/schedule", path_params={"id": deployment.id}, json={}
            )
            answer.raise_for_status()
            runs = _scheduled_runs(client, added)
        assert len(runs) == 1, [r.expected_start_time for r in runs]
        assert runs[0].auto_scheduled
    finally:
        inventory.remove(added)
        stack.bootstrap()
    with stack.sync_client() as client:
        assert _scheduled_runs(client, added) == []


def test_prefect_deploy_all_yields_the_same_deployments(stack: Stack) -> None:
    with stack.sync_client() as client:
        before = snapshot(client)
    result = subprocess.run(
        [sys.executable, "-m", "prefect", "--no-prompt", "deploy", "--all"],
        cwd=stack.project_dir,
        env=stack.environment(),
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    with stack.sync_client() as client:
        after = snapshot(client)
    assert after == before
