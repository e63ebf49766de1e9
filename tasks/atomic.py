"""Files that appear whole or not at all: write beside, fsync, rename, fsync the directory."""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Protocol

#: Bytes written between two requests to the kernel to start writing them out (write-behind).
WRITE_BEHIND = 32 << 20
#: Bytes hashed per read in `HashingWriter.catch_up`.
READ_SIZE = 4 << 20


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


class ArchiveSink(Protocol):
    """What a download writes an archive into: a `HashingWriter`, or one behind an encryption
    (`tasks.encryption.EncryptingWriter`). Bytes arrive through `write`, or from a child process
    given `fileno()` that `catch_up` then accounts for."""

    @property
    def size(self) -> int:
        """Bytes received so far."""
        ...

    def fileno(self) -> int: ...

    def write(self, data: bytes) -> None: ...

    def catch_up(self) -> int:
        """Account for what a child wrote to `fileno()` since; returns how many bytes."""
        ...

    def storage_fd(self) -> int:
        """A descriptor of the file on the repository's disk (whose free space says whether a
        failed write was for want of room); `fileno()` itself unless that is a pipe."""
        ...


class HashingWriter:
    """An unbuffered file that counts and hashes what goes through it.

    Bytes come either from `write`, or from another writer of the same file (a child process
    given `fileno()`, see `tasks.openssh`) that `catch_up` then reads back and hashes. Either
    way the kernel is asked to start writing each 32 MiB out at once (write-behind), so the
    final fsync of `atomic_file` waits for the last few MiB, not the whole archive.
    """

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self.size = 0
        self._sha256 = hashlib.sha256()
        self._flushed = 0
        self._buffer: memoryview | None = None

    def fileno(self) -> int:
        return self._fd

    def storage_fd(self) -> int:
        return self._fd

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            written = os.write(self._fd, view)
            view = view[written:]
        self._sha256.update(data)
        self.size += len(data)
        self._write_behind()

    def catch_up(self) -> int:
        """Hash what another writer has added to the file since; returns how many bytes."""
        if self._buffer is None:
            self._buffer = memoryview(bytearray(READ_SIZE))
        before = self.size
        while read := os.preadv(self._fd, [self._buffer], self.size):
            self._sha256.update(self._buffer[:read])
            self.size += read
            self._write_behind()
        return self.size - before

    @property
    def sha256(self) -> str:
        return self._sha256.hexdigest()

    def _write_behind(self) -> None:
        if self.size - self._flushed >= WRITE_BEHIND:
            _start_writeback(self._fd, self._flushed, self.size - self._flushed)
            self._flushed = self.size


def _writeback_starter() -> Callable[[int, int, int], object]:
    """Linux's sync_file_range(SYNC_FILE_RANGE_WRITE): start writing a range out, don't wait.

    Only a hint (the fsync before the rename is what makes the file durable); a no-op where
    libc does not have it.
    """
    try:
        function = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return lambda fd, offset, length: None
    function.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    function.restype = ctypes.c_int
    sync_file_range_write = 2
    return lambda fd, offset, length: function(fd, offset, length, sync_file_range_write)


_start_writeback = _writeback_starter()


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
