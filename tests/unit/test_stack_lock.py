"""One stack per data directory: a second lock on it is refused, naming the holder's pid."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from deployments.system.lock import (
    PID_FILE,
    DataDirLock,
    StackRunning,
    read_holder,
)
from deployments.worker.lifeline import start_time


def test_a_second_lock_on_the_same_data_dir_is_refused_with_the_holders_pid(
    tmp_path: Path,
) -> None:
    with DataDirLock(tmp_path / "var"):
        with pytest.raises(StackRunning, match=f"pid {os.getpid()}") as refused:
            DataDirLock(tmp_path / "var").acquire()
        assert refused.value.holder is not None
        assert refused.value.holder.start_time == start_time(os.getpid())
        # Another data directory is another stack.
        with DataDirLock(tmp_path / "other"):
            pass


def test_the_pid_file_names_the_holder_and_goes_with_the_lock(tmp_path: Path) -> None:
    lock = DataDirLock(tmp_path).acquire()
    written = json.loads((tmp_path / PID_FILE).read_text())
    assert written == {"pid": os.getpid(), "start_time": start_time(os.getpid())}
    lock.release()
    lock.release()
    assert not (tmp_path / PID_FILE).exists()
    DataDirLock(tmp_path).acquire().release()


def test_a_stale_pid_file_does_not_block_a_start(tmp_path: Path) -> None:
    """The kernel's lock decides; a pid file left by a killed stack is only overwritten."""
    (tmp_path / PID_FILE).write_text('{"pid": 999999999, "start_time": 1}\n')
    with DataDirLock(tmp_path):
        holder = read_holder(tmp_path)
        assert holder is not None and holder.pid == os.getpid()


def test_start_time_is_field_22_of_proc_stat() -> None:
    stat = Path(f"/proc/{os.getpid()}/stat").read_text()
    assert start_time(os.getpid()) == int(stat.rsplit(")", 1)[1].split()[19])
    assert start_time(os.getpid()) == int(stat.split()[21])  # our name has no space
    assert start_time(999999999) is None
