"""Every test starts from a clean environment: no PREFECT_* or MM_* variables from the shell."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

#: Prefixes of variables a developer's shell may carry that would point tests at the wrong place.
CLEANED_PREFIXES = ("PREFECT_", "MM_")


def _scrub() -> None:
    for key in [k for k in os.environ if k.startswith(CLEANED_PREFIXES)]:
        del os.environ[key]


# Prefect reads its settings from the environment when it is imported, and the session's
# services below import it: scrub first.
_scrub()

# The session's services, one of each for every tier (a second stack would cost ~30 s).
from tasks.core.settings import get_settings  # noqa: E402
from tests.support.session import age_identity, failover, inventory, stack, target  # noqa: E402

__all__ = ["age_identity", "failover", "inventory", "stack", "target"]


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--stack-mode",
        choices=("embedded", "scaled"),
        default="embedded",
        help="integration stack on SQLite (embedded) or on PostgreSQL + Redis with two API"
        " processes and two worker hosts (scaled); tests marked `scaled` need the latter",
    )
    parser.addoption(
        "--burst",
        choices=("full", "sixth"),
        default="full",
        help="size of test_burst.py's burst: issue 7's whole one (full, CI's) or a sixth of it",
    )


def pytest_configure(config: pytest.Config) -> None:
    # Before collection: Prefect reads its settings from the environment when it is imported,
    # and test modules import it, so the session fixture alone would come too late for that.
    _scrub()


@pytest.fixture(autouse=True, scope="session")
def clean_environ() -> None:
    """No PREFECT_* or MM_* variable from the shell reaches a test (like httpx's conftest)."""
    _scrub()


@pytest.fixture(autouse=True)
def fresh_settings() -> Iterator[None]:
    """Each test reads the MM_* settings of its own environment: the process's cache
    (`get_settings`) is emptied before and after it, as a new process would start."""
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()
