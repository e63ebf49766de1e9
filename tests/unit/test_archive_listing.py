"""The member listing of an archive: read from a tar stream as it passes, kept as JSON lines."""

from __future__ import annotations

import io
import subprocess
import tarfile
from pathlib import Path

import pytest

from tasks.archive_listing import (
    ListingWriter,
    listing_file,
    load_listing,
    read_members,
    write_listing,
)
from tasks.core.errors import ArchiveInvalid


def _tree(root: Path) -> None:
    (root / "dir with space").mkdir(parents=True)
    (root / "dir with space" / "a $(x) 'q'.txt").write_text("hello\n")
    (root / "dir with space" / "link").symlink_to("a $(x) 'q'.txt")
    run = root / "run.sh"
    run.write_text("#!/bin/sh\n")
    run.chmod(0o4755)


@pytest.mark.parametrize("compression", ["none", "gzip"])
def test_the_listing_of_a_gnu_tar_stream_names_every_member_with_its_type(
    tmp_path: Path, compression: str
) -> None:
    _tree(tmp_path / "src")
    flags = ["--gzip"] if compression == "gzip" else []
    tar = subprocess.run(
        ["tar", "--create", "--file=-", *flags, f"--directory={tmp_path}", "--", "src"],
        capture_output=True,
        check=True,
    )
    members = {m.path: m for m in read_members(io.BytesIO(tar.stdout), compression)}
    assert members["src/dir with space"].type == "dir"
    text = members["src/dir with space/a $(x) 'q'.txt"]
    assert (text.type, text.size) == ("file", 6)
    link = members["src/dir with space/link"]
    assert (link.type, link.link) == ("symlink", "a $(x) 'q'.txt")
    assert members["src/run.sh"].mode == 0o4755

    path = tmp_path / "listing.files.jsonl"
    assert write_listing(path, members.values()) == len(members)
    assert load_listing(path) == list(members.values())


def test_a_stream_cut_short_is_not_taken_for_an_archive(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        data = b"x" * 10_000
        info = tarfile.TarInfo("big")
        info.size = len(data)
        archive.addfile(info, io.BytesIO(data))
    cut = io.BytesIO(buffer.getvalue()[:2048])
    with pytest.raises(ArchiveInvalid):
        list(read_members(cut))


def test_a_listing_is_written_as_members_come_and_appears_only_whole(tmp_path: Path) -> None:
    """`listing_file`: batches of lines reach the temp file while the archive is read, more
    than one batch here; an error leaves nothing under the listing's name."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for n in range(2000):
            archive.addfile(tarfile.TarInfo(f"srv/many/file-{n:04}"), io.BytesIO(b""))
    path = tmp_path / "listing.files.jsonl"
    with listing_file(path) as listing:
        for member in read_members(io.BytesIO(buffer.getvalue())):
            listing.add(member)
        assert listing.count == 2000 and listing.files == 2000
        partial = next(tmp_path.glob(".listing.files.jsonl.*.partial"))
        assert partial.stat().st_size >= ListingWriter.BATCH, "nothing written before the end"
        assert not path.exists()
    assert [m.path for m in load_listing(path)] == [f"srv/many/file-{n:04}" for n in range(2000)]

    failed = tmp_path / "failed.files.jsonl"
    with pytest.raises(ArchiveInvalid), listing_file(failed) as listing:
        for member in read_members(io.BytesIO(buffer.getvalue())):
            listing.add(member)
        raise ArchiveInvalid("the archive's checksum did not match")
    assert list(tmp_path.glob(".failed*")) == [] and not failed.exists()
