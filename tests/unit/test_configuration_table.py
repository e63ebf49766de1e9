"""README's configuration table lists every MM_* variable the code reads, and only those.

Read means: a field of a pydantic-settings class (its `env_prefix` + the field's name), or a
literal name in `os.environ[...]`, `os.environ.get(...)`, `os.getenv(...)` or `env.get(...)`.
"""

from __future__ import annotations

import importlib
import pkgutil
import re
from pathlib import Path

from pydantic_settings import BaseSettings

PROJECT = Path(__file__).resolve().parents[2]
#: The packages of the system; their modules are imported to find the settings classes.
PACKAGES = ("tasks", "flows", "deployments", "api_shim")
#: Scanned for raw reads too (not imported: bench/request_log is a sitecustomize hook).
SCANNED = (*PACKAGES, "bench")

RAW_READ = re.compile(
    r"""(?:environ|\benv|getenv)\s*(?:\.get|\.setdefault)?\s*[\[(]\s*["'](MM_[A-Z0-9_]+)["']"""
)
TABLE_ROW = re.compile(r"^\|\s*(`MM_[^|]*)\|")
NAME = re.compile(r"`(MM_[A-Z0-9_]+)`")


def settings_classes() -> set[type[BaseSettings]]:
    found: set[type[BaseSettings]] = set()
    for package in PACKAGES:
        for module in pkgutil.walk_packages([str(PROJECT / package)], prefix=f"{package}."):
            loaded = importlib.import_module(module.name)
            for value in vars(loaded).values():
                if (
                    isinstance(value, type)
                    and issubclass(value, BaseSettings)
                    and value.__module__.split(".")[0] in PACKAGES
                ):
                    found.add(value)
    return found


def settings_names() -> set[str]:
    names: set[str] = set()
    for cls in settings_classes():
        prefix = str(cls.model_config.get("env_prefix", ""))
        for name, field in cls.model_fields.items():
            alias = field.validation_alias or field.alias
            names.add(str(alias).upper() if isinstance(alias, str) else f"{prefix}{name}".upper())
    return {n for n in names if n.startswith("MM_")}


def raw_names() -> set[str]:
    names: set[str] = set()
    for package in SCANNED:
        for path in (PROJECT / package).rglob("*.py"):
            names.update(RAW_READ.findall(path.read_text()))
    return names


def readme_names() -> set[str]:
    names: set[str] = set()
    for line in (PROJECT / "README.md").read_text().splitlines():
        if row := TABLE_ROW.match(line):
            names.update(NAME.findall(row.group(1)))
    return names


def test_the_scan_finds_the_settings_we_know_of() -> None:
    # A guard on the test itself: a broken scan would pass with an empty set.
    assert {"MM_BACKUP_ROOT", "MM_JWT_SECRET", "MM_MAINTENANCE_CRON"} <= settings_names()
    assert {"MM_HEARTBEAT_SECONDS", "MM_BENCH_DATA"} <= raw_names()


def test_every_variable_the_code_reads_is_in_the_readme_table() -> None:
    missing = (settings_names() | raw_names()) - readme_names()
    assert not missing, f"add rows to README's configuration table: {sorted(missing)}"


def test_every_variable_in_the_readme_table_is_read_by_the_code() -> None:
    stale = readme_names() - settings_names() - raw_names()
    assert not stale, f"README's configuration table names variables nothing reads: {sorted(stale)}"
