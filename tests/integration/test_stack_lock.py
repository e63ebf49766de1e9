"""A second `make up` on a data directory that a stack holds says which process holds it and
exits non-zero, before it binds any port or writes anything there."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from deployments.control.bootstrap import PROJECT_DIR
from deployments.system.lock import PID_FILE, DataDirLock


def test_a_second_make_up_on_the_same_data_dir_is_refused_with_the_first_ones_pid(
    tmp_path: Path,
) -> None:
    data_dir = tmp_path / "var"
    # This process stands for the first `make up`: the lock is what a running one holds.
    with DataDirLock(data_dir):
        before = sorted(p.name for p in data_dir.iterdir())
        second = subprocess.run(
            [sys.executable, "-m", "deployments.system.up", "--data-dir", str(data_dir)],
            cwd=PROJECT_DIR,
            env={**os.environ, "MM_INVENTORY": str(tmp_path / "inventory.yaml")},
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert sorted(p.name for p in data_dir.iterdir()) == before
        assert (data_dir / PID_FILE).exists()
    assert second.returncode == 1, second.stderr
    said = " ".join(second.stderr.split())
    assert f"already running on {data_dir} (pid {os.getpid()})" in said
    assert "in use" not in said
    # It wrote no example inventory either.
    assert not (tmp_path / "inventory.yaml").exists()
