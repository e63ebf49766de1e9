"""tasks/core/settings.py: the sections keep the variables' names, bad values are named without
being echoed, and a process without the shim's secret still reads its settings."""

from __future__ import annotations

from pathlib import Path

import pytest

from tasks.core.settings import (
    InsecureSettings,
    Settings,
    SettingsError,
    get_settings,
    read_settings,
)


def test_each_section_reads_its_variables_by_their_old_names(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MM_BACKUP_ROOT", "/big-disk/backups")
    monkeypatch.setenv("MM_SSH_IDLE_TIMEOUT", "33")
    monkeypatch.setenv("MM_KEEP_LAST", "2")
    monkeypatch.setenv("MM_MAINTENANCE_TIMEZONE", "Europe/Paris")
    monkeypatch.setenv("MM_COMPLETED_JOBS_PER_QUEUE", "10")
    monkeypatch.setenv("MM_LOCK_DURATIONS", '{"backup": 600}')
    settings = Settings()
    assert settings.paths.backup_root == Path("/big-disk/backups")
    assert settings.ssh.idle_timeout == 33
    assert settings.keep.last == 2
    assert settings.maintenance.timezone == "Europe/Paris"
    assert settings.job_records.completed_jobs_per_queue == 10
    assert settings.supervision.lock_durations == {"backup": 600}


def test_read_once_per_process() -> None:
    assert get_settings() is get_settings()


def test_a_process_without_the_secret_reads_its_settings() -> None:
    """A worker never gets MM_JWT_SECRET (deployments/system/stack.py): only its use refuses."""
    settings = read_settings()
    assert settings.api.jwt_secret is None
    with pytest.raises(InsecureSettings):
        settings.api.secret  # noqa: B018


def test_bad_values_are_named_by_variable_and_not_echoed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MM_DATABASE_URL", "postgresql://prefect:db-password@db/prefect")
    monkeypatch.setenv("MM_REDIS_URL", "redis://:redis-password@cache/zero")
    monkeypatch.setenv("MM_SSH_CLIENT", "telnet")
    monkeypatch.setenv("MM_LOCK_DURATIONS", "backup=600")
    with pytest.raises(SettingsError) as caught:
        read_settings()
    message = str(caught.value)
    for name in ("MM_DATABASE_URL", "MM_REDIS_URL", "MM_SSH_CLIENT", "MM_LOCK_DURATIONS"):
        assert f"{name}: " in message
    assert "password" not in message
