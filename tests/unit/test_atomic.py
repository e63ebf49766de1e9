"""`HashingWriter` counts and hashes bytes written by us or by a child process given its fd."""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path

from tasks.atomic import READ_SIZE, WRITE_BEHIND, atomic_file


def test_catch_up_hashes_what_a_child_wrote_through_the_fd(tmp_path: Path) -> None:
    data = os.urandom(READ_SIZE + 12345)  # more than one read, not a multiple of it
    target = tmp_path / "archive.tar"
    with atomic_file(target) as out:
        assert out.catch_up() == 0
        subprocess.run(["cat"], input=data[:1000], stdout=out.fileno(), check=True)
        assert out.catch_up() == 1000
        subprocess.run(["cat"], input=data[1000:], stdout=out.fileno(), check=True)
        assert out.catch_up() == len(data) - 1000
        assert out.catch_up() == 0
    assert target.read_bytes() == data
    assert (out.size, out.sha256) == (len(data), hashlib.sha256(data).hexdigest())


def test_writes_past_the_write_behind_step_stay_whole(tmp_path: Path) -> None:
    chunk = os.urandom(1 << 20)
    target = tmp_path / "archive.tar"
    digest = hashlib.sha256()
    with atomic_file(target) as out:
        for _ in range(WRITE_BEHIND // len(chunk) * 2 + 3):
            out.write(chunk)
            digest.update(chunk)
    assert out.sha256 == digest.hexdigest()
    assert target.stat().st_size == out.size == WRITE_BEHIND * 2 + 3 * len(chunk)
