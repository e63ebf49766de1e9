"""`make demo` as a newcomer runs it: the stack comes up, a scan and a backup complete, and
Ctrl-C stops every process it started."""

from __future__ import annotations

import base64
import os
import re
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import httpx

from deployments.system.local_target import descendants, free_port

ROOT = Path(__file__).resolve().parents[2]


def _wait_for_line(path: Path, needle: str, process: subprocess.Popen[bytes], timeout: float):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = path.read_text(errors="replace") if path.exists() else ""
        if needle in text:
            return text
        assert process.poll() is None, f"exited with {process.returncode}:\n{text[-3000:]}"
        time.sleep(0.5)
    raise AssertionError(f"{needle!r} not printed within {timeout} s:\n{text[-3000:]}")


def test_demo_runs_a_scan_and_a_backup_and_ctrl_c_stops_everything(tmp_path):
    output = tmp_path / "out.txt"
    env = {**os.environ, "COLUMNS": "200", "DO_NOT_TRACK": "1"}
    with output.open("wb") as sink:
        process = subprocess.Popen(
            [
                sys.executable, "-m", "deployments.system.up", "--demo",
                "--data-dir", str(tmp_path / "var"),
                "--port", str(free_port()),
                "--api-port", str(free_port()),
            ],
            cwd=ROOT, env=env, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:
        text = _wait_for_line(output, "demo jobs done", process, timeout=240)
        assert "Prefect UI" in text
        assert "dev token" in text
        _check_prefect_login(text, tmp_path / "var")
        assert "failed" not in text.lower()
        backups = list((tmp_path / "var").rglob("*.tar*"))
        assert backups, "the demo backup wrote no archive"
        children = descendants(process.pid)
        assert children, "the stack started no processes"

        process.send_signal(signal.SIGINT)
        # Stack.stop() is bounded: one grace period (15 s) plus the server's few seconds.
        assert process.wait(timeout=30) == 0
        alive = [pid for pid in children if _running(pid)]
        assert not alive, f"still running after Ctrl-C: {alive}"
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)


def _running(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _check_prefect_login(text: str, data_dir: Path) -> None:
    """The UI asks for the auth string, and `make up` says where it is kept (private)."""
    ui = re.search(r"Prefect UI\s+(\S+)", text)
    login = re.search(r"Prefect login (\S+)", text)
    assert ui and login, text
    kept = Path(login.group(1))
    assert kept == data_dir / "prefect-auth"
    assert stat.S_IMODE(kept.stat().st_mode) == 0o600
    settings = httpx.get(f"{ui.group(1)}/ui-settings", timeout=10).raise_for_status().json()
    assert settings["auth"] == "BASIC" and settings["csrf_enabled"] is True
    assert httpx.get(f"{ui.group(1)}/api/admin/version", timeout=10).status_code == 401
    basic = base64.b64encode(kept.read_text().strip().encode()).decode()
    answer = httpx.get(
        f"{ui.group(1)}/api/admin/version", headers={"Authorization": f"Basic {basic}"}, timeout=10
    )
    assert answer.status_code == 200
