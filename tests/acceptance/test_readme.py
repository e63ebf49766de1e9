"""What README.md tells a newcomer to type is what CI and the Makefile actually run."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _first_code_block(text: str) -> list[str]:
    block = re.search(r"```(?:sh|bash)?\n(.*?)```", text, re.S)
    assert block, "README.md has no code block"
    return [line.split("#")[0].strip() for line in block.group(1).splitlines() if line.strip()]


def test_readme_opens_with_the_run_and_test_commands():
    commands = _first_code_block((ROOT / "README.md").read_text())
    assert commands == ["make up", "make test"]


def test_ci_runs_the_readme_test_command_and_installs_sshd_when_missing():
    ci = (ROOT / ".ci" / "run").read_text()
    test_command = _first_code_block((ROOT / "README.md").read_text())[1]
    assert re.search(rf"^\s*{re.escape(test_command)}\s*$", ci, re.M)
    assert "set -euo pipefail" in ci
    guard = re.search(r"if \[ ! -x /usr/sbin/sshd \]; then(.*?)fi", ci, re.S)
    assert guard and "apt-get install" in guard.group(1) and "openssh-server" in guard.group(1)


def test_make_targets_install_what_they_need():
    makefile = (ROOT / "Makefile").read_text()
    for target in ("up", "test", "demo"):
        assert re.search(rf"^{target}: install\b", makefile, re.M), target
    assert "sync --frozen" in makefile
    assert "openssh-server" in makefile


def test_ci_and_make_test_install_prometheus_for_the_monitoring_tests():
    # tests/unit/test_monitoring.py runs promtool and tests/integration/test_monitoring.py a
    # real Prometheus; neither skips when the binary is missing, so both installers must bring it.
    ci = (ROOT / ".ci" / "run").read_text()
    guard = re.search(r"if ! command -v promtool .*?; then(.*?)fi", ci, re.S)
    assert guard and "apt-get install" in guard.group(1) and "prometheus" in guard.group(1)
    makefile = (ROOT / "Makefile").read_text()
    test_recipe = makefile.split("\ntest: install", 1)[1].split("\nlint:", 1)[0]
    assert (
        "command -v promtool" in test_recipe
        and "install -y --no-install-recommends prometheus" in test_recipe
    )
