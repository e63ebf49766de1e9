"""A forked run reads Prefect's settings again only when their sources differ from its own;
the fork server preloads every deployed flow."""

from __future__ import annotations

from pathlib import Path

import yaml

from deployments.worker.forkserver import PRELOAD, _settings_sources

BASE = {"PREFECT_API_URL": "http://127.0.0.1:4200/api", "HOME": "/root", "PATH": "/bin"}


def test_the_engine_variables_and_other_programs_variables_do_not_count() -> None:
    run = {**BASE, "PREFECT__FLOW_RUN_ID": "x", "PREFECT__CONTROL_PORT": "1", "PATH": "/usr/bin"}
    assert _settings_sources(run, "/project") == _settings_sources(BASE, "/project")


def test_a_changed_or_added_setting_counts() -> None:
    changed = {**BASE, "PREFECT_API_URL": "http://elsewhere/api"}
    added = {**BASE, "PREFECT_LOGGING_LEVEL": "DEBUG"}
    lower = {**BASE, "prefect_logging_level": "DEBUG"}
    for env in (changed, added, lower):
        assert _settings_sources(env, "/project") != _settings_sources(BASE, "/project")


def test_another_working_directory_counts() -> None:
    # Its .env, prefect.toml and pyproject.toml are settings sources too.
    assert _settings_sources(BASE, "/elsewhere") != _settings_sources(BASE, "/project")


def test_the_fork_server_preloads_the_flow_of_every_deployment_in_prefect_yaml() -> None:
    # prefect.yaml, not the catalogue the list is built from: a flow the yaml deploys but the
    # fork server does not preload costs each of its runs the imports (flows.maintenance did).
    config = yaml.safe_load((Path(__file__).parents[2] / "prefect.yaml").read_text())
    modules = {d["entrypoint"].partition(":")[0] for d in config["deployments"]}
    assert modules <= set(PRELOAD)
    assert "flows.maintenance" in modules
