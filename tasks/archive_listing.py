"""What an archive holds, member by member: read from a tar stream once, at backup time, and
kept beside the manifest (`BackupRepository.listing_path`), so that `medicine-man ls` and
`GET /api/backups/:id/files` need neither the identity of an encrypted archive nor a read of
the whole archive.

The file is JSON lines, one `Member` per line in archive order, camelCase like the manifest.
It is written as the members are read (`listing_file`), so a backup holds no member in memory:
a server's million files would have cost a job about 750 MiB as `Member`s.
"""

from __future__ import annotations

import contextlib
import tarfile
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Literal

from pydantic import BaseModel, ConfigDict
from pydantic.alias_generators import to_camel

from tasks.atomic import HashingWriter, atomic_file
from tasks.core.errors import ArchiveInvalid

MemberType = Literal["file", "dir", "symlink", "hardlink", "other"]


class Member(BaseModel):
    """One member of a tar archive, as `tar --list --verbose` would show it."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, frozen=True)

    #: As stored: relative to / on the server, no leading slash (tasks/backup.py's tar).
    path: str
    type: MemberType
    size: int
    mtime: datetime
    #: Permission bits, e.g. 0o644 (setuid and setgid included: a restore drops them).
    mode: int
    #: Where a symlink points, or the member a hard link repeats.
    link: str | None = None
    user: str = ""
    group: str = ""


def _type(info: tarfile.TarInfo) -> MemberType:
    if info.isreg():
        return "file"
    if info.isdir():
        return "dir"
    if info.issym():
        return "symlink"
    if info.islnk():
        return "hardlink"
    return "other"


def member(info: tarfile.TarInfo) -> Member:
    return Member(
        path=info.name,
        type=_type(info),
        size=info.size,
        mtime=datetime.fromtimestamp(info.mtime, UTC),
        mode=info.mode & 0o7777,
        link=info.linkname or None,
        user=info.uname,
        group=info.gname,
    )


def read_members(stream: IO[bytes], compression: str = "none") -> Iterator[Member]:
    """The members of the tar stream `stream` (not seekable: a pipe will do), in order; file
    data is skipped, not kept. `compression`: "none" or "gzip" (zstd is decompressed by the
    caller, e.g. through `zstd -dc`). Raises `ArchiveInvalid` where the stream is not tar."""
    mode = "r|gz" if compression == "gzip" else "r|"
    try:
        with tarfile.open(fileobj=stream, mode=mode) as archive:  # type: ignore[call-overload]
            while (info := archive.next()) is not None:
                # A TarFile keeps every header it has read, a stream's too: ~400 bytes a member
                # that nothing here reads again.
                archive.members.clear()
                yield member(info)
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise ArchiveInvalid(f"not a whole tar archive: {exc}") from exc


class ListingWriter:
    """Members written out as they come, in batches; counts them, and the regular files."""

    #: Bytes of JSON lines gathered before a write.
    BATCH = 1 << 16

    def __init__(self, out: HashingWriter) -> None:
        self._out = out
        self._pending = bytearray()
        self.count = 0
        self.files = 0

    def add(self, member: Member) -> None:
        self._pending += member.model_dump_json(by_alias=True).encode()
        self._pending += b"\n"
        self.count += 1
        self.files += member.type == "file"
        if len(self._pending) >= self.BATCH:
            self.flush()

    def flush(self) -> None:
        if self._pending:
            self._out.write(bytes(self._pending))
            self._pending.clear()


@contextlib.contextmanager
def listing_file(path: Path) -> Iterator[ListingWriter]:
    """The listing at `path`, written as members are added: it appears under its name, whole,
    only when the block ends without an error (`tasks.atomic.atomic_file`)."""
    with atomic_file(path) as out:
        writer = ListingWriter(out)
        yield writer
        writer.flush()


def write_listing(path: Path, members: Iterable[Member]) -> int:
    """Write the listing atomically; returns how many members it holds."""
    with listing_file(path) as listing:
        for one in members:
            listing.add(one)
    return listing.count


def load_listing(path: Path) -> list[Member]:
    """The listing written by `write_listing`; `FileNotFoundError` when there is none."""
    text = path.read_text()
    return [Member.model_validate_json(line) for line in text.splitlines() if line]
