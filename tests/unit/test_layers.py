"""The layers contract in pyproject.toml holds on the repository and catches an upward import."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
# The console script beside this interpreter: `uv run` puts it there, PATH may not.
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"


def lint_imports(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    # PYTHONPATH first, so the fake packages below shadow the real ones installed in the venv.
    env = {**os.environ, "PYTHONPATH": str(cwd)}
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-logo", "--no-cache", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.fixture(scope="module")
def contract() -> dict[str, Any]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    [layers] = [c for c in config["contracts"] if c["id"] == "layers"]
    assert isinstance(layers, dict)
    return layers


def test_the_contract_passes_on_the_repository() -> None:
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "3 kept, 0 broken" in result.stdout


def test_the_top_layers_import_down_only(contract: dict[str, Any]) -> None:
    # The order docs/ARCHITECTURE.md draws; bench and tests stay outside the contract.
    assert contract["layers"] == ["api_shim", "deployments", "flows", "tasks"]


def test_no_upward_import_is_excused(contract: dict[str, Any]) -> None:
    assert not contract.get("ignore_imports")


def test_the_core_contract_forbids_every_other_module_of_tasks() -> None:
    # import-linter cannot say "tasks but not tasks.core", so the contract lists the siblings; a
    # new module of tasks/ must join the list, or tasks.core could import it unnoticed.
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    [core] = [c for c in config["contracts"] if c["id"] == "core"]
    siblings = {
        f"tasks.{path.stem if path.is_file() else path.name}"
        for path in (ROOT / "tasks").iterdir()
        if (path.suffix == ".py" and path.stem != "__init__") or (path / "__init__.py").exists()
    } - {"tasks.core"}
    assert set(core["forbidden_modules"]) == {"api_shim", "deployments", "flows", *siblings}


@pytest.mark.parametrize(
    ("importer", "imported"),
    [("tasks", "flows"), ("flows", "deployments"), ("deployments", "api_shim")],
)
def test_an_upward_import_breaks_the_contract(
    tmp_path: Path, contract: dict[str, Any], importer: str, imported: str
) -> None:
    # A tiny tree with the same layers: each package has one module, and one of them imports up.
    for package in contract["layers"]:
        (tmp_path / package).mkdir()
        (tmp_path / package / "__init__.py").write_text("")
        (tmp_path / package / "core.py").write_text("")
    (tmp_path / importer / "core.py").write_text(f"from {imported} import core\n")
    layers = ", ".join(f'"{layer}"' for layer in contract["layers"])
    (tmp_path / ".importlinter.toml").write_text(
        f"[tool.importlinter]\nroot_packages = [{layers}]\n\n"
        f'[[tool.importlinter.contracts]]\nname = "layers"\ntype = "layers"\n'
        f"layers = [{layers}]\n"
    )
    result = lint_imports(tmp_path, ".importlinter.toml")
    assert result.returncode != 0
    assert "BROKEN" in result.stdout
    assert f"{importer}.core -> {imported}.core" in result.stdout


def test_deployments_is_layered_by_concern() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    [inner] = [c for c in config["contracts"] if c["id"] == "deployments"]
    packages = {path.name for path in (ROOT / "deployments").iterdir() if path.is_dir()}
    named = {name.strip() for layer in inner["layers"] for name in layer.split("|")}
    # Every subpackage has its place, and no module sits loose beside them.
    assert named == packages - {"__pycache__"}
    assert [p.name for p in (ROOT / "deployments").glob("*.py")] == ["__init__.py"]


@pytest.mark.parametrize(
    ("importer", "imported"),
    [("control", "worker"), ("worker", "system"), ("control", "cli")],
)
def test_an_upward_import_inside_deployments_breaks_its_contract(
    tmp_path: Path, importer: str, imported: str
) -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    [inner] = [c for c in config["contracts"] if c["id"] == "deployments"]
    root = tmp_path / "deployments"
    root.mkdir()
    (root / "__init__.py").write_text("")
    for layer in inner["layers"]:
        for package in (name.strip() for name in layer.split("|")):
            (root / package).mkdir()
            (root / package / "__init__.py").write_text("")
            (root / package / "core.py").write_text("")
    (root / importer / "core.py").write_text(f"from deployments.{imported} import core\n")
    layers = ", ".join(f'"{layer}"' for layer in inner["layers"])
    (tmp_path / ".importlinter.toml").write_text(
        '[tool.importlinter]\nroot_packages = ["deployments"]\n\n'
        '[[tool.importlinter.contracts]]\nname = "inner"\ntype = "layers"\n'
        f'containers = ["deployments"]\nlayers = [{layers}]\n'
    )
    result = lint_imports(tmp_path, ".importlinter.toml")
    assert result.returncode != 0
    assert f"deployments.{importer}.core -> deployments.{imported}.core" in result.stdout
