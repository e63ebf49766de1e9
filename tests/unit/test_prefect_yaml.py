"""prefect.yaml, the source of truth for deployments, agrees with the catalogue and queue table."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from prefect.flows import load_flow_from_entrypoint

from deployments.control.bootstrap import PROJECT_DIR
from deployments.control.catalogue import ALL_DEPLOYMENTS, CHECK, MAINTENANCE, Deployment
from deployments.control.queues import Priority

PREFECT_YAML = PROJECT_DIR / "prefect.yaml"


@pytest.fixture(scope="module")
def config() -> dict[str, Any]:
    loaded = yaml.safe_load(PREFECT_YAML.read_text())
    assert isinstance(loaded, dict)
    return loaded


def by_name(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {d["name"]: d for d in config["deployments"]}


def test_it_has_exactly_the_catalogue_deployments(config: dict[str, Any]) -> None:
    names = [d["name"] for d in config["deployments"]]
    assert sorted(names) == sorted(d.name for d in ALL_DEPLOYMENTS)
    assert len(names) == len(set(names))


@pytest.mark.parametrize("deployment", ALL_DEPLOYMENTS, ids=lambda d: d.name)
def test_deployment_agrees_with_the_catalogue(
    config: dict[str, Any], deployment: Deployment
) -> None:
    entry = by_name(config)[deployment.name]
    assert entry["entrypoint"] == deployment.entrypoint
    assert entry["work_pool"]["name"] == deployment.queue.name
    assert entry["work_pool"]["work_queue_name"] == deployment.priority.queue_name
    assert "medicine-man" in entry["tags"]


@pytest.mark.parametrize("deployment", ALL_DEPLOYMENTS, ids=lambda d: d.name)
def test_entrypoint_loads_the_named_flow(
    deployment: Deployment, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Entrypoints are relative to the project directory, as `prefect deploy` and workers see them.
    monkeypatch.chdir(PROJECT_DIR)
    flow = load_flow_from_entrypoint(deployment.entrypoint)
    assert flow.name == deployment.flow_name


def test_runs_start_in_the_project_directory_with_nothing_to_build_or_pull(
    config: dict[str, Any],
) -> None:
    assert not config.get("build")
    assert not config.get("push")
    assert config["pull"] == []  # Explicitly empty, or `prefect deploy` adds a default step.
    for entry in config["deployments"]:
        assert "pull" not in entry and "build" not in entry


def test_no_deployment_sets_job_variables(config: dict[str, Any]) -> None:
    # The pools' template fixes the working directory and offers no variable to override.
    assert "definitions" not in config
    for entry in config["deployments"]:
        assert "job_variables" not in entry and "job_variables" not in entry["work_pool"]


def test_no_schedules_in_the_yaml(config: dict[str, Any]) -> None:
    # The bootstrap owns the schedules (backups from the inventory, maintenance from
    # MM_MAINTENANCE_CRON); a `schedules:` key here would make `prefect deploy` replace them.
    for entry in config["deployments"]:
        assert "schedules" not in entry and "schedule" not in entry


def test_project_dir_is_the_repository_root() -> None:
    assert (PROJECT_DIR / "pyproject.toml").is_file()
    assert Path(__file__).resolve().is_relative_to(PROJECT_DIR)


@pytest.mark.parametrize("deployment", ALL_DEPLOYMENTS, ids=lambda d: d.name)
def test_deployment_concurrency_limit_is_the_catalogues(
    config: dict[str, Any], deployment: Deployment
) -> None:
    """A second guard that holds across workers: a job deployment's limit is its pool's."""
    assert by_name(config)[deployment.name]["concurrency_limit"] == deployment.concurrency_limit
    if deployment.limit is None:
        assert deployment.concurrency_limit == deployment.queue.concurrency


@pytest.mark.parametrize("deployment", [MAINTENANCE, CHECK], ids=lambda d: d.name)
def test_maintenance_and_checks_run_alone_on_the_low_queue_of_the_scan_pool(
    config: dict[str, Any], deployment: Deployment
) -> None:
    entry = by_name(config)[deployment.name]
    assert (entry["work_pool"]["name"], entry["work_pool"]["work_queue_name"]) == ("scan", "low")
    assert entry["concurrency_limit"] == 1
    assert deployment.priority is Priority.LOW
