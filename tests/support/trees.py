"""Source trees to back up, and how to compare them after a restore."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path


def make_tree(root: Path, *, big_bytes: int = 3_000_000) -> Path:
    """A small tree with the awkward cases: nesting, spaces, empty and binary files, a symlink."""
    (root / "nested" / "deeper").mkdir(parents=True)
    (root / "with space").mkdir()
    (root / "a.txt").write_text("alpha\n")
    (root / "empty").write_bytes(b"")
    (root / "nested" / "b.bin").write_bytes(os.urandom(big_bytes))
    (root / "nested" / "deeper" / "c.txt").write_text("gamma " * 1000)
    (root / "with space" / "d e.txt").write_text("delta\n")
    (root / "link").symlink_to("a.txt")
    return root


def tree_digest(root: Path) -> dict[str, str]:
    """Relative path -> sha256 of every file (symlinks by their target), directories included."""
    digest: dict[str, str] = {}
    for path in sorted(root.rglob("*")):
        relative = str(path.relative_to(root))
        if path.is_symlink():
            digest[relative] = "link:" + os.readlink(path)
        elif path.is_dir():
            digest[relative] = "dir"
        else:
            digest[relative] = hashlib.sha256(path.read_bytes()).hexdigest()
    return digest


def restored(root: Path, source: Path) -> Path:
    """Where `source` lands inside a restore into `root` (members are stored relative to /)."""
    return root / source.relative_to("/")
