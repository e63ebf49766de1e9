"""The environment every process of the stack gets: Prefect settings we choose, yours win."""

from __future__ import annotations

from pathlib import Path

from deployments.stack import Stack


def test_vacuum_and_client_handshakes_by_default(tmp_path: Path) -> None:
    env = Stack(tmp_path, extra_env={}).environment()
    assert env["PREFECT_SERVER_SERVICES_DB_VACUUM_ENABLED"] == "events,orphans"
    assert env["PREFECT_CLIENT_SERVER_VERSION_CHECK_ENABLED"] == "false"
    assert env["PREFECT_CLIENT_CSRF_SUPPORT_ENABLED"] == "false"


def test_a_server_that_checks_csrf_tokens_gets_clients_that_send_them(tmp_path: Path) -> None:
    env = Stack(
        tmp_path, extra_env={"PREFECT_SERVER_API_CSRF_PROTECTION_ENABLED": "True"}
    ).environment()
    assert "PREFECT_CLIENT_CSRF_SUPPORT_ENABLED" not in env


def test_settings_given_explicitly_are_kept(tmp_path: Path) -> None:
    env = Stack(
        tmp_path,
        extra_env={
            "PREFECT_SERVER_SERVICES_DB_VACUUM_ENABLED": "events,flow_runs",
            "PREFECT_CLIENT_SERVER_VERSION_CHECK_ENABLED": "true",
        },
    ).environment()
    assert env["PREFECT_SERVER_SERVICES_DB_VACUUM_ENABLED"] == "events,flow_runs"
    assert env["PREFECT_CLIENT_SERVER_VERSION_CHECK_ENABLED"] == "true"
