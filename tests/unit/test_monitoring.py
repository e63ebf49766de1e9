"""The shipped alert rules load in Prometheus' own checker and fire as their test file says
(`promtool`, from the `prometheus` package that `make test` and `.ci/run` install; without it
this fails: nothing here is skipped), and the dashboard is JSON Grafana can import."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "monitoring/prometheus/rules.yml"
RULES_TEST = ROOT / "monitoring/prometheus/rules.test.yml"
DASHBOARD = ROOT / "monitoring/grafana/dashboard.json"


@pytest.fixture(scope="module")
def promtool() -> str:
    found = shutil.which("promtool")
    assert found, "promtool is missing: install the prometheus package (make test does)"
    return found


def run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv, cwd=RULES.parent, capture_output=True, text=True, timeout=60, check=False
    )


def test_the_rules_pass_promtool_check(promtool: str) -> None:
    result = run(promtool, "check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 5 rules found" in result.stdout


def test_the_alerts_fire_as_their_tests_say(promtool: str) -> None:
    result = run(promtool, "test", "rules", str(RULES_TEST))
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_broken_rule_fails_the_check(promtool: str, tmp_path: Path) -> None:
    # The check can fail: a rule whose PromQL does not parse.
    broken = tmp_path / "rules.yml"
    broken.write_text(RULES.read_text().replace("max by (queue) (", "max by (queue (", 1))
    assert run(promtool, "check", "rules", str(broken)).returncode != 0


def test_the_dashboard_is_grafana_json_with_a_query_per_panel() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] == "medicine-man-jobs"
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    assert all(
        panel["targets"] and all(t["expr"] for t in panel["targets"])
        for panel in dashboard["panels"]
    )
