"""The source tree the backup benchmark reads: generated once, deterministically, then cached.

    uv run python -m bench.tree [--quick]      # generate (or check) the tree, print its path

The full tree is 1 GiB: 20,000 small files (text-like, 0.5-32 KiB) in 200 directories plus
a few large files, half pseudo-random and half hex text, so zstd has something to do and
something it cannot. The quick tree has the same shape at 1/8 of the size. Bytes come from
AES-CTR under a fixed key and every mtime is fixed, so the tar stream is the same on every
machine. Trees live under `$MM_BENCH_DATA` (default `~/.cache/medicine-man-bench`), never in
the repository; a `<tree>.json` beside the directory marks it complete.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from tasks.core.settings import get_settings

#: Bumped whenever the generator changes, so an old cached tree is not reused.
VERSION = 1
MTIME = 1_700_000_000
MIB = 1 << 20
#: Bytes -> hex digits and a newline now and then: about 4 bits of entropy per byte.
_TEXT = bytes((b"0123456789abcdef \n"[i % 18]) for i in range(256))


@dataclass(frozen=True)
class TreeSpec:
    """The shape of a benchmark tree."""

    name: str
    small_files: int
    small_dirs: int
    total_bytes: int
    large_files: int

    @property
    def path(self) -> Path:
        return data_dir() / f"tree-{self.name}-v{VERSION}"


FULL = TreeSpec("full", small_files=20_000, small_dirs=200, total_bytes=1 << 30, large_files=8)
QUICK = TreeSpec("quick", small_files=2_500, small_dirs=25, total_bytes=128 << 20, large_files=4)


def data_dir() -> Path:
    """Where benchmark data is cached (not in the repository)."""
    return get_settings().bench.data.expanduser()


def ensure_tree(spec: TreeSpec) -> Path:
    """The tree of `spec`, generated first unless a complete copy is cached."""
    marker = spec.path.with_suffix(".json")
    if marker.is_file() and json.loads(marker.read_text()) == asdict(spec):
        return spec.path
    marker.unlink(missing_ok=True)
    shutil.rmtree(spec.path, ignore_errors=True)
    print(f"generating the {spec.name} tree ({spec.total_bytes / MIB:.0f} MiB) in {spec.path}")
    _generate(spec)
    marker.write_text(json.dumps(asdict(spec)))
    return spec.path


def tree_bytes(root: Path) -> int:
    """Bytes in the regular files under `root`."""
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file() and not p.is_symlink())


def _generate(spec: TreeSpec) -> None:
    rng = random.Random(VERSION)
    stream = Cipher(algorithms.AES(bytes(16)), modes.CTR(bytes(16))).encryptor()
    written = 0
    for n in range(spec.small_files):
        directory = spec.path / "small" / f"d{n % spec.small_dirs:03d}"
        directory.mkdir(parents=True, exist_ok=True)
        size = int(min(32 * 1024, max(512, rng.lognormvariate(8.6, 0.9))))
        _write(directory / f"f{n:05d}.txt", stream.update(bytes(size)).translate(_TEXT))
        written += size
    large = (spec.total_bytes - written) // spec.large_files
    (spec.path / "large").mkdir(parents=True)
    for n in range(spec.large_files):
        path = spec.path / "large" / f"blob{n}.bin"
        with path.open("wb") as out:
            left = large
            while left:
                chunk = stream.update(bytes(min(MIB, left)))
                # Alternate MiB blocks: random (incompressible), then text (about 2:1).
                out.write(chunk if (left // MIB) % 2 else chunk.translate(_TEXT))
                left -= len(chunk)
        os.utime(path, (MTIME, MTIME))
    for directory in [*spec.path.rglob("*"), spec.path]:
        if directory.is_dir():
            os.utime(directory, (MTIME, MTIME))


def _write(path: Path, data: bytes) -> None:
    path.write_bytes(data)
    os.utime(path, (MTIME, MTIME))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="the 128 MiB tree")
    args = parser.parse_args()
    path = ensure_tree(QUICK if args.quick else FULL)
    print(f"{path}: {tree_bytes(path) / MIB:.0f} MiB")


if __name__ == "__main__":
    main()
