"""Files that appear whole or not at all: write beside, fsync, rename, fsync the directory."""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path


def fsync_dir(directory: Path) -> None:
    """Make a rename in `directory` durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes) -> None:
    """Replace `path` with `data`; a crash leaves the old file or the new one, never a mix."""
    with atomic_file(path) as out:
        out.write(data)


class HashingWriter:
    """An unbuffered file that counts and hashes what goes through it."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self.size = 0
        self._sha256 = hashlib.sha256()

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            written = os.write(self._fd, view)
            view = view[written:]
        self._sha256.update(data)
        self.size += len(data)

    @property
    def sha256(self) -> str:
        return self._sha256.hexdigest()


@contextlib.contextmanager
def atomic_file(path: Path, *, temp_prefix: str | None = None) -> Iterator[HashingWriter]:
    """Write `path` through a hidden temp file in the same directory.

    On success the temp file is fsynced and renamed over `path`; on any exception it is
    removed, so a half-written file is never visible under the final name.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp_name = tempfile.mkstemp(
        dir=path.parent, prefix=temp_prefix or f".{path.name}.", suffix=".partial"
    )
    temp = Path(temp_name)
    try:
        writer = HashingWriter(fd)
        yield writer
        os.fsync(fd)
        os.close(fd)
        fd = -1
        os.chmod(temp, 0o600)
        temp.replace(path)
        fsync_dir(path.parent)
    except BaseException:
        if fd >= 0:
            os.close(fd)
        temp.unlink(missing_ok=True)
        raise
