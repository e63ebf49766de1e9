"""Age key pairs made for a test (`age-keygen`, nothing committed), and a watch that sees every
open of a file by any process (inotify), for "no identity file is opened during a backup"."""

from __future__ import annotations

import ctypes
import os
import struct
import subprocess
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

#: inotify(7): a file or directory was opened.
IN_OPEN = 0x20
IN_NONBLOCK = os.O_NONBLOCK
_EVENT = struct.Struct("iIII")


@dataclass(frozen=True)
class Identity:
    """A key pair: the private key's file (mode 0600) and its public key."""

    path: Path
    recipient: str


def make_identity(path: Path) -> Identity:
    """A new age key pair, its private key written to `path` by `age-keygen` itself."""
    path.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["age-keygen", "-o", str(path)], check=True, capture_output=True)
    recipient = subprocess.run(
        ["age-keygen", "-y", str(path)], check=True, capture_output=True, text=True
    ).stdout.strip()
    return Identity(path, recipient)


class OpenWatch:
    """Counts the opens of one file, by any process, while it is active (Linux inotify)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._libc = ctypes.CDLL(None, use_errno=True)
        self._fd = -1
        self.opens = 0

    def __enter__(self) -> OpenWatch:
        self._fd = self._libc.inotify_init1(IN_NONBLOCK)
        if self._fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1")
        if self._libc.inotify_add_watch(self._fd, str(self.path).encode(), IN_OPEN) < 0:
            raise OSError(ctypes.get_errno(), f"inotify_add_watch {self.path}")
        return self

    def count(self) -> int:
        """Opens seen so far."""
        while True:
            try:
                data = os.read(self._fd, 4096)
            except BlockingIOError:
                return self.opens
            offset = 0
            while offset < len(data):
                _, mask, _, length = _EVENT.unpack_from(data, offset)
                offset += _EVENT.size + length
                if mask & IN_OPEN:
                    self.opens += 1

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.count()
        os.close(self._fd)
