"""The environment every process of the stack gets: Prefect settings we choose, yours win, and
each secret only where it is needed."""

from __future__ import annotations

import signal
import stat
from pathlib import Path

import pytest

from deployments.system import up
from deployments.system.credentials import JWT_SECRET_FILE, PREFECT_AUTH_FILE
from deployments.system.stack import Stack, StackError
from tasks.core.settings import BackendSettings

EMBEDDED = BackendSettings(database_url=None, redis_url=None)
SCALED = BackendSettings(
    database_url="postgresql+asyncpg://prefect:db-password@db:5432/prefect",
    redis_url="redis://:redis-password@redis:6379/0",
)


def test_vacuum_and_client_handshakes_by_default(tmp_path: Path) -> None:
    env = Stack(tmp_path, extra_env={}, backend=EMBEDDED).environment()
    assert env["PREFECT_SERVER_SERVICES_DB_VACUUM_ENABLED"] == "events,orphans"
    assert env["PREFECT_CLIENT_SERVER_VERSION_CHECK_ENABLED"] == "false"
    # The server checks CSRF tokens, so clients must send them (Prefect's default).
    assert "PREFECT_CLIENT_CSRF_SUPPORT_ENABLED" not in env


def test_settings_given_explicitly_are_kept(tmp_path: Path) -> None:
    env = Stack(
        tmp_path,
        backend=EMBEDDED,
        extra_env={
            "PREFECT_SERVER_SERVICES_DB_VACUUM_ENABLED": "events,flow_runs",
            "PREFECT_CLIENT_SERVER_VERSION_CHECK_ENABLED": "true",
        },
    ).environment()
    assert env["PREFECT_SERVER_SERVICES_DB_VACUUM_ENABLED"] == "events,flow_runs"
    assert env["PREFECT_CLIENT_SERVER_VERSION_CHECK_ENABLED"] == "true"


def test_the_auth_string_is_made_once_and_kept_private(tmp_path: Path) -> None:
    first = Stack(tmp_path / "data", backend=EMBEDDED)
    again = Stack(tmp_path / "data", backend=EMBEDDED)
    assert first.auth_string and first.auth_string == again.auth_string
    assert first.jwt_secret and first.jwt_secret == again.jwt_secret
    assert len(first.jwt_secret) >= 32
    for name in (PREFECT_AUTH_FILE, JWT_SECRET_FILE):
        assert stat.S_IMODE((tmp_path / "data" / name).stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "data").stat().st_mode) == 0o700


def test_the_server_side_checks_credentials_csrf_tokens_and_origins(tmp_path: Path) -> None:
    stack = Stack(tmp_path, port=4321, backend=EMBEDDED)
    server = stack.server_environment()
    assert server["PREFECT_SERVER_API_AUTH_STRING"] == stack.auth_string
    assert server["PREFECT_SERVER_API_CSRF_PROTECTION_ENABLED"] == "true"
    origins = server["PREFECT_SERVER_API_CORS_ALLOWED_ORIGINS"].split(",")
    assert origins == ["http://127.0.0.1:4321", "http://localhost:4321"]
    assert stack.environment()["PREFECT_API_AUTH_STRING"] == stack.auth_string


def test_secrets_reach_only_the_processes_that_need_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    inherited = {
        "MM_JWT_SECRET": "j" * 40,
        "MM_DATABASE_URL": SCALED.database_url,
        "MM_REDIS_URL": SCALED.redis_url,
        "PREFECT_API_DATABASE_CONNECTION_URL": SCALED.database_url,
        "PREFECT_REDIS_MESSAGING_PASSWORD": "redis-password",
        "PREFECT_SERVER_API_AUTH_STRING": "someone:else",
        "MM_BACKUP_IDENTITY": str(tmp_path / "age-identity.txt"),
    }
    for key, value in inherited.items():
        assert value is not None
        monkeypatch.setenv(key, value)
    stack = Stack(tmp_path, backend=SCALED, auth_string="admin:" + "a" * 40)
    clients = stack.environment()
    # Workers, their flow runs, the bootstrap: no database or Redis password, no JWT secret.
    assert not any("db-password" in v or "redis-password" in v for v in clients.values())
    assert "MM_JWT_SECRET" not in clients
    # Backups are encrypted to public keys: no process of the stack gets the private one.
    assert "MM_BACKUP_IDENTITY" not in clients
    assert "MM_BACKUP_IDENTITY" not in stack.server_environment()
    assert "PREFECT_SERVER_API_AUTH_STRING" not in clients
    assert clients["PREFECT_API_AUTH_STRING"] == "admin:" + "a" * 40
    server = stack.server_environment()
    assert server["PREFECT_API_DATABASE_CONNECTION_URL"] == SCALED.database_url
    assert server["PREFECT_REDIS_MESSAGING_PASSWORD"] == "redis-password"
    assert server["PREFECT_SERVER_API_AUTH_STRING"] == "admin:" + "a" * 40
    assert "MM_JWT_SECRET" not in server


def test_scaled_mode_refuses_to_start_without_an_auth_string(tmp_path: Path) -> None:
    with pytest.raises(StackError, match="PREFECT_API_AUTH_STRING"):
        Stack(tmp_path, backend=SCALED)
    assert not (tmp_path / PREFECT_AUTH_FILE).exists()


def test_the_environments_repositories_and_inventory_win_over_the_data_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`make up` with MM_BACKUP_ROOT on the big disk writes there, where the CLI looks."""
    monkeypatch.setenv("MM_BACKUP_ROOT", str(tmp_path / "big-disk" / "backups"))
    monkeypatch.setenv("MM_RESULTS_ROOT", str(tmp_path / "big-disk" / "results"))
    monkeypatch.setenv("MM_INVENTORY", str(tmp_path / "servers.yaml"))
    env = Stack(tmp_path / "data", backend=EMBEDDED).environment()
    assert env["MM_BACKUP_ROOT"] == str(tmp_path / "big-disk" / "backups")
    assert env["MM_RESULTS_ROOT"] == str(tmp_path / "big-disk" / "results")
    assert env["MM_INVENTORY"] == str(tmp_path / "servers.yaml")


def test_make_up_gives_its_workers_the_environments_repositories(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`make up` (deployments.system.up) with MM_BACKUP_ROOT set: the workers it starts, and so
    their flow runs, write archives there, not under its data directory; the secret stays out."""
    monkeypatch.setenv("MM_BACKUP_ROOT", str(tmp_path / "big-disk" / "backups"))
    monkeypatch.setenv("MM_RESULTS_ROOT", str(tmp_path / "big-disk" / "results"))
    monkeypatch.setenv("MM_INVENTORY", str(tmp_path / "servers.yaml"))
    monkeypatch.setenv("MM_JWT_SECRET", "j" * 40)
    built: list[Stack] = []

    def start(self: Stack, timeout: float = 90.0) -> Stack:
        built.append(self)
        raise StackError("not started in a unit test")

    monkeypatch.setattr(Stack, "start", start)
    # `run` takes over SIGINT and SIGTERM, as `make up` must; give them back to pytest.
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        assert up.main(["--data-dir", str(tmp_path / "var")]) == 1
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)
    [stack] = built
    worker = stack.host_environment(0)  # what `start_worker` passes to each worker
    assert worker["MM_BACKUP_ROOT"] == str(tmp_path / "big-disk" / "backups")
    assert worker["MM_RESULTS_ROOT"] == str(tmp_path / "big-disk" / "results")
    assert worker["MM_INVENTORY"] == str(tmp_path / "servers.yaml")
    assert "MM_JWT_SECRET" not in worker
    assert not (tmp_path / "var" / "backups").exists()


def test_every_worker_host_shares_the_environments_repository(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MM_BACKUP_ROOT", str(tmp_path / "shared"))
    stack = Stack(tmp_path / "data", backend=EMBEDDED, hosts=2)
    for host in range(2):
        assert stack.host_environment(host)["MM_BACKUP_ROOT"] == str(tmp_path / "shared")


def test_explicit_arguments_win_over_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MM_BACKUP_ROOT", str(tmp_path / "env-backups"))
    stack = Stack(tmp_path / "data", backend=EMBEDDED, backup_root=tmp_path / "mine")
    assert stack.environment()["MM_BACKUP_ROOT"] == str(tmp_path / "mine")


def test_unset_repositories_default_to_the_data_dir(tmp_path: Path) -> None:
    env = Stack(tmp_path / "data", backend=EMBEDDED).environment()
    assert env["MM_BACKUP_ROOT"] == str(tmp_path / "data" / "backups")
    assert env["MM_RESULTS_ROOT"] == str(tmp_path / "data" / "results")


def test_relative_repositories_are_taken_from_the_current_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The children run in the project directory; a relative path must not move with them."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MM_BACKUP_ROOT", "backups-here")
    env = Stack(tmp_path / "data", backend=EMBEDDED).environment()
    assert env["MM_BACKUP_ROOT"] == str(tmp_path / "backups-here")


def test_port_grace_and_worker_type_come_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MM_API_PORT", "3456")
    monkeypatch.setenv("MM_STOP_GRACE", "4.5")
    monkeypatch.setenv("MM_WORKER_TYPE", "process")
    stack = Stack(tmp_path, backend=EMBEDDED)
    assert (stack.api_port, stack.stop_grace, stack.worker_type) == (3456, 4.5, "process")
    assert stack.environment()["MM_API_PORT"] == "3456"


def test_an_invalid_setting_is_a_stack_error_naming_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MM_SSH_CLIENT", "telnet")
    with pytest.raises(StackError, match="MM_SSH_CLIENT"):
        Stack(tmp_path, backend=EMBEDDED)


def test_a_secret_file_others_can_read_stops_the_stack(tmp_path: Path) -> None:
    Stack(tmp_path, backend=EMBEDDED)
    (tmp_path / PREFECT_AUTH_FILE).chmod(0o644)
    with pytest.raises(StackError, match="readable by other users"):
        Stack(tmp_path, backend=EMBEDDED)
