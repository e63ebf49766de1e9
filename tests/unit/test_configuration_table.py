"""README's configuration table lists exactly the MM_* variables tasks/core/settings.py declares,
with their defaults; and nothing else declares or reads one.

A variable is a section's `env_prefix` plus a field's name (`variable`). The default column is
checked where it states one: a literal in backticks, `unset` (None, or False for a switch) or
`empty` (the empty string); words such as "(required)" are left to the reader.
"""

from __future__ import annotations

import importlib
import pkgutil
import re
from pathlib import Path
from typing import Any

import pytest
from pydantic_core import PydanticUndefined
from pydantic_settings import BaseSettings

from tasks.core import settings as settings_module
from tasks.core.settings import Settings, section_classes, variable

PROJECT = Path(__file__).resolve().parents[2]
#: The packages of the system; their modules are imported to find settings classes.
PACKAGES = ("tasks", "flows", "deployments", "api_shim")

#: `os.environ["MM_X"]`, `.get("MM_X")`, `getenv("MM_X")`, `env.get(...)`; not `env["MM_X"] = ...`,
#: which sets a child's variable (deployments/system/stack.py).
RAW_READ = re.compile(
    r"""(?:environ|\benv|getenv)\s*(?:\.get|\.setdefault)?\s*[\[(]\s*["'](MM_[A-Z0-9_]+)["']"""
    r"""(?!\s*\]\s*=[^=])"""
)
#: `| `MM_NAME` | default | meaning |`
TABLE_ROW = re.compile(r"^\|\s*`(MM_[A-Z0-9_]+)`\s*\|([^|]*)\|")
LITERAL = re.compile(r"^`([^`]*)`$")


def declared() -> dict[str, Any]:
    """Every variable of `Settings`, with its default."""
    found: dict[str, Any] = {}
    for cls in section_classes().values():
        for name, field in cls.model_fields.items():
            default = field.default_factory() if field.default_factory else field.default  # type: ignore[call-arg]
            found[variable(cls, name)] = default
    return found


def readme_rows() -> dict[str, str]:
    rows: dict[str, str] = {}
    for line in (PROJECT / "README.md").read_text().splitlines():
        if row := TABLE_ROW.match(line):
            assert row.group(1) not in rows, f"{row.group(1)} has two rows"
            rows[row.group(1)] = row.group(2).strip()
    return rows


def test_the_table_and_the_settings_module_are_read() -> None:
    # A guard on the test itself: a broken parse would pass with two empty sets.
    assert {"MM_BACKUP_ROOT", "MM_JWT_SECRET", "MM_MAINTENANCE_CRON", "MM_KEEP_LAST"} <= set(
        declared()
    )
    assert {"MM_INVENTORY", "MM_SSH_CLIENT", "MM_BENCH_DATA"} <= set(readme_rows())


def test_the_readme_table_lists_exactly_the_declared_variables() -> None:
    missing = set(declared()) - set(readme_rows())
    stale = set(readme_rows()) - set(declared())
    assert not missing, f"add rows to README's configuration table: {sorted(missing)}"
    assert not stale, f"README's table names variables nothing declares: {sorted(stale)}"


def _same(stated: str, default: Any) -> bool:
    if isinstance(default, bool):
        return stated.lower() in (("1", "true") if default else ("0", "false"))
    if isinstance(default, int | float):
        return float(stated) == default
    return stated == str(default)


@pytest.mark.parametrize("name", sorted(declared()))
def test_the_default_in_the_table_is_the_declared_one(name: str) -> None:
    default = declared()[name]
    assert default is not PydanticUndefined, f"{name} has no default"
    stated = readme_rows().get(name)
    if stated is None:
        pytest.skip("not in the table (the test above fails)")
    if literal := LITERAL.match(stated):
        assert _same(literal.group(1), default), f"README says {stated}, the code {default!r}"
    elif stated == "unset":
        assert default is None or default is False, f"README says unset, the code {default!r}"
    elif stated == "empty":
        assert default == "", f"README says empty, the code {default!r}"


def _modules() -> list[str]:
    return [
        module.name
        for package in PACKAGES
        for module in pkgutil.walk_packages([str(PROJECT / package)], prefix=f"{package}.")
    ]


def test_no_other_module_declares_settings() -> None:
    """One module declares them all: a `BaseSettings` elsewhere would read on its own."""
    elsewhere = set()
    for name in _modules():
        for value in vars(importlib.import_module(name)).values():
            if (
                isinstance(value, type)
                and issubclass(value, BaseSettings)
                and value.__module__.split(".")[0] in PACKAGES
                and value.__module__ != settings_module.__name__
            ):
                elsewhere.add(f"{value.__module__}.{value.__qualname__}")
    assert not elsewhere, f"declare these in tasks/core/settings.py: {sorted(elsewhere)}"


def test_every_section_is_in_settings() -> None:
    sections = {
        value
        for value in vars(settings_module).values()
        if isinstance(value, type) and issubclass(value, BaseSettings) and value is not BaseSettings
    }
    assert sections == set(section_classes().values())
    assert set(Settings.model_fields) == set(section_classes())


def test_the_code_reads_no_mm_variable_itself() -> None:
    """Through the settings only; bench/ may read a declared one raw, where importing pydantic
    would cost every process it measures (bench/request_log/sitecustomize.py)."""
    raw: dict[str, set[str]] = {}
    for folder in (*PACKAGES, "bench"):
        for path in (PROJECT / folder).rglob("*.py"):
            for name in RAW_READ.findall(path.read_text()):
                raw.setdefault(name, set()).add(str(path.relative_to(PROJECT)))
    system = {n: p for n, p in raw.items() if any(not f.startswith("bench/") for f in p)}
    assert not system, f"read these through tasks/core/settings.py: {system}"
    assert set(raw) <= set(declared()), f"declare these: {sorted(set(raw) - set(declared()))}"
    assert "MM_BENCH_REQUEST_LOG" in raw  # the scan works
