"""The metric names the shipped rules and dashboard use, the names a /metrics exposition
exports, and a Prometheus of a test's own (tests/integration/test_monitoring.py)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import yaml
from prometheus_client.parser import text_string_to_metric_families

from deployments.system.local_target import free_port

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "monitoring/prometheus/rules.yml"
DASHBOARD = ROOT / "monitoring/grafana/dashboard.json"

#: Our metrics all start with `mm_`; PromQL's functions, keywords and labels never do.
_NAME = re.compile(r"(?<![\w:])(mm_[A-Za-z0-9_:]+)")
#: What a family of each type exports besides (or instead of) its own name.
_SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "summary": ("_sum", "_count", "_created"),
    "gauge": ("",),
}


def names_in(promql: str) -> set[str]:
    # Label values in quotes may name things too (`route="/metrics"`): not metrics.
    return set(_NAME.findall(re.sub(r'"[^"]*"', '""', promql)))


def used_names() -> dict[str, set[str]]:
    """Metric names by where they are used: each alert, each dashboard panel."""
    used: dict[str, set[str]] = {}
    for group in yaml.safe_load(RULES.read_text())["groups"]:
        for rule in group["rules"]:
            used[f"alert {rule['alert']}"] = names_in(rule["expr"])
    for panel in json.loads(DASHBOARD.read_text())["panels"]:
        exprs = " ".join(t["expr"] for t in panel["targets"])
        used[f"panel {panel['title']!r}"] = names_in(exprs)
    return used


def exported_names(exposition: str) -> set[str]:
    """Every series name the exposition's families stand for, samples or not yet."""
    names: set[str] = set()
    for family in text_string_to_metric_families(exposition):
        names.update(family.name + s for s in _SUFFIXES.get(family.type, ("",)))
        names.update(sample.name for sample in family.samples)
    return names


@contextmanager
def prometheus(target: str, rules: Path, workdir: Path) -> Iterator[str]:
    """A Prometheus scraping `target` (host:port) every second, evaluating `rules` every
    second, on a free port; yields its URL."""
    binary = shutil.which("prometheus")
    assert binary, "prometheus is missing: install the prometheus package (make test does)"
    config: dict[str, Any] = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(rules)],
        "scrape_configs": [{"job_name": "medicine-man", "static_configs": [{"targets": [target]}]}],
    }
    (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    log = (workdir / "prometheus.log").open("wb")
    process = subprocess.Popen(
        [
            binary,
            f"--config.file={workdir / 'prometheus.yml'}",
            f"--storage.tsdb.path={workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{url}/-/ready", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert process.poll() is None, (workdir / "prometheus.log").read_text()
            assert time.monotonic() < deadline, "prometheus did not become ready"
            time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)
        log.close()


def alerts(url: str) -> list[dict[str, Any]]:
    """The alerts Prometheus has now (pending or firing)."""
    answer = httpx.get(f"{url}/api/v1/alerts", timeout=5).json()
    found: list[dict[str, Any]] = answer["data"]["alerts"]
    return found
