"""What a scan asks a server, and how the answers are read. Pure functions, tested alone."""

from __future__ import annotations

import json
import shlex
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

QUICK_SCRIPT = r"""
printf 'uptime\t%s\n' "$(cut -d' ' -f1 /proc/uptime 2>/dev/null)"
if [ -r /etc/os-release ]; then . /etc/os-release; printf 'os\t%s\n' "$PRETTY_NAME"; fi
printf 'hostname\t%s\n' "$(hostname 2>/dev/null || cat /etc/hostname 2>/dev/null)"
printf 'kernel\t%s\n' "$(uname -r)"
"""

_DOCKER_SCRIPT = r"""
command -v docker >/dev/null 2>&1 || { echo absent; exit 0; }
docker ps --format '{{json .}}'
"""

_SERVICES_SCRIPT = r"""
command -v systemctl >/dev/null 2>&1 || { echo absent; exit 0; }
systemctl list-units --type=service --state=running --no-legend --plain --no-pager
"""


def parse_tabbed(output: str) -> dict[str, str]:
    """`key<TAB>value` lines into a dict."""
    pairs = (line.partition("\t") for line in output.splitlines())
    return {key: value for key, _, value in pairs if key}


def parse_quick(output: str) -> dict[str, Any]:
    values = parse_tabbed(output)
    uptime = values.get("uptime") or ""
    return {
        "hostname": values.get("hostname") or None,
        "os": values.get("os") or None,
        "kernel": values.get("kernel") or None,
        "uptimeSeconds": float(uptime) if uptime else None,
    }


def parse_os_release(output: str) -> dict[str, str]:
    """`/etc/os-release`: KEY=value lines with shell quoting."""
    release: dict[str, str] = {}
    for line in output.splitlines():
        key, sep, value = line.partition("=")
        if not sep or not key.strip() or key.startswith("#"):
            continue
        try:
            parts = shlex.split(value)
        except ValueError:
            parts = [value]
        release[key.strip()] = parts[0] if parts else ""
    return {
        "name": release.get("PRETTY_NAME") or release.get("NAME", ""),
        "id": release.get("ID", ""),
        "version": release.get("VERSION_ID", ""),
    }


def parse_kernel(output: str) -> dict[str, str]:
    release, _, machine = output.strip().partition("\n")
    return {"release": release.strip(), "machine": machine.strip()}


def parse_cpu(output: str) -> dict[str, Any]:
    lines = output.strip().splitlines()
    model = ""
    if len(lines) > 1:
        model = lines[1].partition(":")[2].strip()
    return {
        "cores": int(lines[0]) if lines and lines[0].strip().isdigit() else None,
        "model": model,
    }


def parse_meminfo(output: str) -> dict[str, int | None]:
    """Bytes of total and available memory and of swap, from `/proc/meminfo` (kB)."""
    kib: dict[str, int] = {}
    for line in output.splitlines():
        key, _, rest = line.partition(":")
        number = rest.split()
        if number and number[0].isdigit():
            kib[key] = int(number[0])

    def size(key: str) -> int | None:
        return kib[key] * 1024 if key in kib else None

    return {
        "totalBytes": size("MemTotal"),
        "availableBytes": size("MemAvailable"),
        "swapTotalBytes": size("SwapTotal"),
    }


def parse_df(output: str) -> list[dict[str, Any]]:
    """`df -P -B1` lines (header skipped); mount points may contain spaces."""
    disks = []
    for line in output.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 6 or not fields[1].isdigit():
            continue
        disks.append(
            {
                "filesystem": fields[0],
                "sizeBytes": int(fields[1]),
                "usedBytes": int(fields[2]),
                "availableBytes": int(fields[3]),
                "usePercent": int(fields[4].rstrip("%"))
                if fields[4].rstrip("%").isdigit()
                else None,
                "mount": " ".join(fields[5:]),
            }
        )
    return disks


def parse_docker(output: str) -> dict[str, Any]:
    if output.strip() == "absent":
        return {"available": False, "containers": []}
    containers = []
    for line in output.splitlines():
        if line.strip():
            item = json.loads(line)
            containers.append(
                {
                    "id": item.get("ID"),
                    "name": item.get("Names"),
                    "image": item.get("Image"),
                    "status": item.get("Status"),
                }
            )
    return {"available": True, "containers": containers}


def parse_services(output: str) -> dict[str, Any]:
    if output.strip() == "absent":
        return {"available": False, "running": []}
    running = [line.split()[0] for line in output.splitlines() if line.strip()]
    return {"available": True, "running": running}


@dataclass(frozen=True)
class Probe:
    """One question for a server: a command (argument list) and how to read its answer."""

    name: str
    argv: list[str]
    parse: Callable[[str], Any]


QUICK_PROBES: tuple[Probe, ...] = (Probe("system", ["sh", "-c", QUICK_SCRIPT], parse_quick),)

FULL_PROBES: tuple[Probe, ...] = (
    Probe("system", ["sh", "-c", QUICK_SCRIPT], parse_quick),
    Probe("os", ["cat", "/etc/os-release"], parse_os_release),
    Probe("kernel", ["sh", "-c", "uname -r; uname -m"], parse_kernel),
    Probe(
        "cpu",
        ["sh", "-c", "nproc; grep -m1 'model name' /proc/cpuinfo || true"],
        parse_cpu,
    ),
    Probe("memory", ["cat", "/proc/meminfo"], parse_meminfo),
    Probe(
        "disks",
        ["df", "-P", "-B1", "-x", "tmpfs", "-x", "devtmpfs", "-x", "overlay", "-x", "squashfs"],
        parse_df,
    ),
    Probe("docker", ["sh", "-c", _DOCKER_SCRIPT], parse_docker),
    Probe("services", ["sh", "-c", _SERVICES_SCRIPT], parse_services),
)


def summary_rows(results: dict[str, Any]) -> list[dict[str, str]]:
    """Scan results as rows of a two-column table for the Prefect UI."""
    rows: list[dict[str, str]] = []
    for name, value in results.items():
        if isinstance(value, dict) and "error" in value:
            rows.append({"item": name, "value": f"error: {value['error']}"})
        elif name == "system":
            for key, item in value.items():
                rows.append({"item": key, "value": "" if item is None else str(item)})
        elif name == "disks":
            for disk in value:
                rows.append(
                    {
                        "item": f"disk {disk['mount']}",
                        "value": f"{disk['usedBytes'] / 1e9:.1f} of {disk['sizeBytes'] / 1e9:.1f}"
                        f" GB used ({disk['usePercent']} %)",
                    }
                )
        elif name == "docker":
            names = ", ".join(str(c["name"]) for c in value["containers"]) or "none running"
            rows.append({"item": "docker", "value": names if value["available"] else "absent"})
        elif name == "services":
            count = len(value["running"])
            rows.append(
                {
                    "item": "services",
                    "value": f"{count} running" if value["available"] else "absent",
                }
            )
        else:
            rows.append({"item": name, "value": ", ".join(f"{k}: {v}" for k, v in value.items())})
    return rows
