"""A backup's files: listing, selecting and restoring them, and refusing what a hostile
archive asks for (tasks/archive_files.py).

Hostile archives are built here with tarfile, member by member: each refused member must stop
the restore with a message that names it and what was left, and nothing may appear outside the
destination, nor any setuid or setgid bit inside it.
"""

from __future__ import annotations

import errno
import gzip
import io
import os
import stat
import subprocess
import tarfile
from pathlib import Path
from uuid import uuid4

import pytest

from tasks import archive_files
from tasks.archive_files import Restored, archive_key, extract, members, plural, restore, select
from tasks.archive_listing import Member, write_listing
from tasks.atomic import atomic_file
from tasks.core.errors import (
    ArchiveInvalid,
    IdentityRequired,
    InvalidOptions,
    MemberNotFound,
    RestoreFailed,
)
from tasks.core.settings import get_settings
from tasks.repository import BackupRepository, BackupStatus, Compression, Manifest, utcnow

# --- building archives -----------------------------------------------------------------------

Entry = tuple[tarfile.TarInfo, bytes | None]


def file(name: str, data: bytes = b"data\n", mode: int = 0o644, uid: int = 0) -> Entry:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.uid, info.mtime = len(data), mode, uid, 1_700_000_000
    return info, data


def directory(name: str, mode: int = 0o755) -> Entry:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.mtime = tarfile.DIRTYPE, mode, 1_600_000_000
    return info, None


def symlink(name: str, target: str) -> Entry:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = tarfile.SYMTYPE, target
    return info, None


def hardlink(name: str, target: str, mode: int = 0o644) -> Entry:
    """Tar gives a hard link the mode and time of its file; a restore sets them again."""
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.mode, info.mtime = tarfile.LNKTYPE, target, mode, 1_700_000_000
    return info, None


def device(name: str, kind: bytes = tarfile.CHRTYPE) -> Entry:
    info = tarfile.TarInfo(name)
    info.type, info.devmajor, info.devminor, info.mode = kind, 1, 3, 0o666
    return info, None


def tar_of(*entries: Entry) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.GNU_FORMAT) as archive:
        for info, data in entries:
            archive.addfile(info, io.BytesIO(data) if data is not None else None)
    return out.getvalue()


def store(repo: BackupRepository, data: bytes, compression: Compression = "none") -> Manifest:
    """A completed backup whose archive is `data` (a plain tar), compressed as asked."""
    if compression == "gzip":
        data = gzip.compress(data)
    elif compression == "zstd":
        data = subprocess.run(
            ["zstd", "-q", "-c"], input=data, capture_output=True, check=True
        ).stdout
    backup_id = uuid4()
    manifest = Manifest(
        backup_id=backup_id,
        server_id=uuid4(),
        server_name="web1",
        job_type="backup:manual",
        compression=compression,
        paths=["/srv"],
        archive=BackupRepository.archive_name(backup_id, compression),
        started_at=utcnow(),
    )
    with atomic_file(repo.archive_path(manifest)) as out:
        out.write(data)
    manifest = manifest.model_copy(
        update={"size": out.size, "sha256": out.sha256, "status": BackupStatus.COMPLETED}
    )
    repo.save(manifest)
    return manifest


def walk(root: Path) -> list[Path]:
    """Every path under `root`; symlinks are listed, never followed."""
    found: list[Path] = []
    for here, dirs, files in os.walk(root):
        found.extend(Path(here) / name for name in (*dirs, *files))
    return sorted(found)


def snapshot(root: Path, skip: Path) -> dict[str, tuple[int, bytes | str | None]]:
    """Every path under `root` but those under `skip`: its mode and content or link."""
    seen: dict[str, tuple[int, bytes | str | None]] = {}
    for path in walk(root):
        if path == skip or skip in path.parents:
            continue
        st = path.lstat()
        if stat.S_ISLNK(st.st_mode):
            seen[str(path)] = (st.st_mode, os.readlink(path))
        elif stat.S_ISREG(st.st_mode):
            seen[str(path)] = (st.st_mode, path.read_bytes())
        else:
            seen[str(path)] = (st.st_mode, None)
    return seen


def names(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in walk(root)}


def special_bits(root: Path) -> list[str]:
    return [
        str(p)
        for p in walk(root)
        if not p.is_symlink() and p.lstat().st_mode & (stat.S_ISUID | stat.S_ISGID | stat.S_ISVTX)
    ]


@pytest.fixture
def repo(tmp_path: Path) -> BackupRepository:
    return BackupRepository(tmp_path / "repo")


@pytest.fixture
def dest(tmp_path: Path) -> Path:
    """Two levels down, so that `../` and `../../` land in the test's own directory."""
    path = tmp_path / "a" / "b" / "dest"
    path.parent.mkdir(parents=True)
    (tmp_path / "a" / "outside.txt").write_text("not yours\n")
    return path


@pytest.fixture
def etc(tmp_path: Path) -> Path:
    """Stands for /etc: an absolute path out of the destination that the test owns, so that a
    regression breaks the test (which runs as root in CI), not the machine's /etc."""
    path = tmp_path / "etc"
    path.mkdir()
    (path / "passwd").write_text("root:x:0:0::/root:/bin/sh\n")
    (path / "shadow").write_text("root:*:1::::::\n")
    (path / "shadow").chmod(0o640)
    return path


# --- hostile archives ------------------------------------------------------------------------


def hostile(case: str, etc: Path) -> tuple[list[Entry], str]:
    """The members of a case that must be refused (after a harmless first member), and what
    the message says about the first of them."""
    cases: dict[str, tuple[list[Entry], str]] = {
        "dot-dot": ([file("../evil")], "'../evil'"),
        "dot-dot deeper": ([file("sub/../../../evil")], "'sub/../../../evil'"),
        "dot-dot inside": ([file("sub/../evil")], "'sub/../evil' has a '..'"),
        "symlink to /etc, then a file under it": (
            [symlink("etc", str(etc)), file("etc/passwd-x")],
            "'etc' is a link to an absolute path",
        ),
        "symlink up, then a file under it": (
            [symlink("up", "../.."), file("up/evil")],
            "'up' would link to",
        ),
        "symlink to itself, then up from it": (
            [symlink("here", "."), symlink("out", "here/..")],
            "'out' would link to",
        ),
        "hard link to /etc/shadow": (
            [hardlink("sh", str(etc / "shadow"))],
            "'sh' is a link to an absolute path",
        ),
        "hard link up": ([hardlink("up", "../outside.txt")], "'up' would link to"),
        "hard link to no member": ([hardlink("h", "never-written")], "no file restored before it"),
        "character device": ([device("null-x")], "'null-x' is a special file"),
        "block device": ([device("sda-x", tarfile.BLKTYPE)], "'sda-x' is a special file"),
        "fifo": ([device("fifo-x", tarfile.FIFOTYPE)], "'fifo-x' is a special file"),
    }
    return cases[case]


HOSTILE = [
    "dot-dot",
    "dot-dot deeper",
    "dot-dot inside",
    "symlink to /etc, then a file under it",
    "symlink up, then a file under it",
    "symlink to itself, then up from it",
    "hard link to /etc/shadow",
    "hard link up",
    "hard link to no member",
    "character device",
    "block device",
    "fifo",
]


@pytest.mark.parametrize("case", HOSTILE)
def test_a_hostile_member_is_refused_and_the_message_says_what_was_left(
    tmp_path: Path, dest: Path, etc: Path, case: str
) -> None:
    refused, named = hostile(case, etc)
    data = tar_of(file("ok.txt"), *refused, file("after.txt"))
    before = snapshot(tmp_path, dest)

    with pytest.raises(RestoreFailed) as failed:
        extract(io.BytesIO(data), dest)

    assert snapshot(tmp_path, dest) == before  # nothing written outside, nothing changed
    message = str(failed.value)
    assert named in message, message
    assert message.startswith(f"restore into {dest} refused "), message
    assert not (dest / "after.txt").exists()  # it stopped at the refused member
    left = set(failed.value.written)
    assert "ok.txt" in left
    assert f"It left {plural(len(left), 'member')} there: 'ok.txt'" in message
    assert names(dest) == left  # the message's list is what is there


def test_a_link_that_a_later_member_turned_out_is_removed(tmp_path: Path, dest: Path) -> None:
    # x/s -> d and x/l -> s/.. lead inside (l to x), and so does x/s -> .. (to dest) which
    # replaces the first s; but now l leads to dest/..: it must not stay.
    data = tar_of(
        directory("x"),
        directory("x/d"),
        symlink("x/s", "d"),
        symlink("x/l", "s/.."),
        symlink("x/s", ".."),
    )
    with pytest.raises(RestoreFailed, match=r"'x/l' is a symlink to 's/\.\.'.*removed") as failed:
        extract(io.BytesIO(data), dest)
    assert not (dest / "x" / "l").is_symlink()
    assert "x/l" not in failed.value.written


def test_the_whole_hostile_archive_of_the_issue_restores_nothing_outside_and_no_setuid_bit(
    tmp_path: Path, dest: Path, etc: Path, repo: BackupRepository
) -> None:
    """`../`, an absolute path, a symlink to /etc then a file under it, a setuid file, a device
    node, a hard link to outside, in one archive: it stops at the first refused member."""
    entries = [
        file("harmless.txt"),
        file("setuid", b"#!/bin/sh\n", mode=0o4755),
        directory("setgid-dir", mode=0o2775),
        file(f"{tmp_path}/abs/evil"),
        file("../evil"),
        symlink("etc", str(etc)),
        file("etc/passwd-x"),
        device("dev/null-x"),
        hardlink("shadow-x", str(etc / "shadow")),
        hardlink("up-x", "../../outside.txt"),
    ]
    manifest = store(repo, tar_of(*entries))
    before = snapshot(tmp_path, dest)

    with pytest.raises(RestoreFailed, match=r"refused '\.\./evil'") as failed:
        restore(repo, manifest, dest)

    stripped = f"{tmp_path}/abs/evil".lstrip("/")  # the leading / dropped
    assert failed.value.written == ["harmless.txt", "setuid", "setgid-dir", stripped]
    assert (dest / stripped).read_bytes() == b"data\n"
    assert snapshot(tmp_path, dest) == before
    assert special_bits(dest) == []
    assert stat.S_IMODE((dest / "setuid").stat().st_mode) == 0o755
    assert stat.S_IMODE((dest / "setgid-dir").stat().st_mode) == 0o755


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    path = tmp_path / "outside"
    path.mkdir()
    (path / "kept.txt").write_text("kept\n")
    return path


def test_a_symlink_already_in_the_destination_is_never_written_through(
    dest: Path, outside: Path
) -> None:
    dest.mkdir()
    (dest / "etc").symlink_to(outside)
    with pytest.raises(RestoreFailed, match="'etc/passwd-x'"):
        extract(io.BytesIO(tar_of(file("etc/passwd-x"))), dest)
    assert sorted(p.name for p in outside.iterdir()) == ["kept.txt"]
    # Not even one that leads inside: the data filter would let this one through.
    (dest / "real").mkdir()
    (dest / "inside").symlink_to("real")
    with pytest.raises(RestoreFailed, match="'inside/x' goes through the symlink 'inside'"):
        extract(io.BytesIO(tar_of(file("inside/x"))), dest)
    assert list((dest / "real").iterdir()) == []

    # In a member's own place: refused if it leads out, replaced (not followed) if it leads in.
    (dest / "theirs").symlink_to(outside / "kept.txt")
    with pytest.raises(RestoreFailed, match="'theirs' would be extracted to"):
        extract(io.BytesIO(tar_of(file("theirs", b"new\n"))), dest)
    assert (outside / "kept.txt").read_text() == "kept\n"
    (dest / "real" / "mine").write_text("mine\n")
    (dest / "mine").symlink_to("real/mine")
    extract(io.BytesIO(tar_of(file("mine", b"new\n"))), dest)
    assert (dest / "real" / "mine").read_text() == "mine\n"
    assert not (dest / "mine").is_symlink() and (dest / "mine").read_text() == "new\n"


def test_an_existing_hard_link_to_a_file_outside_is_replaced_not_written_through(
    dest: Path, outside: Path
) -> None:
    dest.mkdir()
    os.link(outside / "kept.txt", dest / "shared.txt")
    extract(io.BytesIO(tar_of(file("shared.txt", b"restored\n"))), dest)
    assert (outside / "kept.txt").read_text() == "kept\n"
    assert (dest / "shared.txt").read_text() == "restored\n"


def test_safe_links_modes_and_times_are_restored(dest: Path) -> None:
    data = tar_of(
        directory("conf", mode=0o700),
        file("conf/secret", b"s3cret\n", mode=0o600),
        file("conf/run.sh", b"#!/bin/sh\n", mode=0o775),
        symlink("conf/current", "secret"),
        symlink("up-and-back", "conf/../conf/secret"),
        symlink("dangling", "not/there"),
        hardlink("conf/secret-again", "conf/secret", mode=0o600),
    )
    written = extract(io.BytesIO(data), dest)

    assert written == [
        "conf",
        "conf/secret",
        "conf/run.sh",
        "conf/current",
        "up-and-back",
        "dangling",
        "conf/secret-again",
    ]
    conf = dest / "conf"
    assert stat.S_IMODE(conf.stat().st_mode) == 0o700  # not opened to everyone
    assert conf.stat().st_mtime == 1_600_000_000  # set after its files were written
    assert stat.S_IMODE((conf / "secret").stat().st_mode) == 0o600
    assert stat.S_IMODE((conf / "run.sh").stat().st_mode) == 0o755  # no group write
    assert (conf / "current").read_text() == "s3cret\n"
    assert (dest / "up-and-back").read_text() == "s3cret\n"
    assert os.readlink(dest / "dangling") == "not/there"
    assert (conf / "secret-again").stat().st_ino == (conf / "secret").stat().st_ino


def test_a_full_disk_stops_the_restore_saying_what_it_left(
    dest: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    makefile = tarfile.TarFile.makefile
    calls: list[str] = []

    def fills_up(self: tarfile.TarFile, info: tarfile.TarInfo, target: str) -> None:
        calls.append(info.name)
        if len(calls) == 2:
            Path(target).write_bytes(b"half")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), target)
        makefile(self, info, target)

    monkeypatch.setattr(tarfile.TarFile, "makefile", fills_up)
    with pytest.raises(RestoreFailed) as failed:
        extract(io.BytesIO(tar_of(file("a"), file("b"), file("c"))), dest)

    message = str(failed.value)
    assert "stopped at 'b'" in message and "No space left on device" in message, message
    assert message.endswith("It left 1 member there: 'a'.")
    assert sorted(p.name for p in dest.iterdir()) == ["a"]  # b, cut short, is gone


def test_a_message_quotes_ten_names_and_counts_the_rest(dest: Path) -> None:
    data = tar_of(*(file(f"f{n:02}") for n in range(13)), file("../evil"))
    with pytest.raises(RestoreFailed) as failed:
        extract(io.BytesIO(data), dest)
    assert str(failed.value).endswith("'f08', 'f09' and 3 more.")
    assert len(failed.value.written) == 13


# --- owners ----------------------------------------------------------------------------------


@pytest.mark.skipif(os.geteuid() != 0, reason="only root can give files to another user")
def test_owners_are_kept_only_on_request(dest: Path, repo: BackupRepository) -> None:
    manifest = store(repo, tar_of(directory("d"), file("d/f", uid=4242, mode=0o4755)))
    dropped = dest / "dropped"
    restore(repo, manifest, dropped)
    assert (dropped / "d" / "f").stat().st_uid == 0

    kept = dest / "kept"
    restore(repo, manifest, kept, same_owner=True)
    assert (kept / "d" / "f").stat().st_uid == 4242
    assert special_bits(kept) == []  # owners kept, setuid still not


def test_keeping_owners_needs_root(
    dest: Path, repo: BackupRepository, monkeypatch: pytest.MonkeyPatch
) -> None:
    manifest = store(repo, tar_of(file("f")))
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(InvalidOptions, match="needs root"):
        restore(repo, manifest, dest, same_owner=True)
    assert not dest.exists()


# --- selecting paths -------------------------------------------------------------------------


def tree_archive(tmp_path: Path) -> bytes:
    """GNU tar of a tree stored as a backup stores it: relative to /, `srv/...`."""
    root = tmp_path / "server"
    (root / "srv" / "app" / "conf.d").mkdir(parents=True)
    (root / "srv" / "app" / "conf.d" / "a.conf").write_text("a\n")
    (root / "srv" / "app" / "main.py").write_text("print(1)\n")
    (root / "srv" / "application").mkdir()
    (root / "srv" / "application" / "other").write_text("other\n")
    (root / "srv" / "top.txt").write_text("top\n")
    os.link(root / "srv" / "top.txt", root / "srv" / "app" / "top-link.txt")
    return subprocess.run(
        ["tar", "--create", "--file=-", f"--directory={root}", "--", "srv"],
        capture_output=True,
        check=True,
    ).stdout


def restored_files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if not p.is_dir())


@pytest.mark.parametrize("compression", ["none", "gzip", "zstd"])
def test_restore_of_one_file_writes_only_it(
    tmp_path: Path, repo: BackupRepository, dest: Path, compression: Compression
) -> None:
    manifest = store(repo, tree_archive(tmp_path), compression)

    done = restore(repo, manifest, dest, paths=["/srv/app/main.py"])

    assert isinstance(done, Restored) and done.written == ["srv/app/main.py"]
    assert restored_files(dest) == ["srv/app/main.py"]
    assert (dest / "srv" / "app" / "main.py").read_text() == "print(1)\n"


def test_restore_of_a_directory_takes_its_subtree_and_not_its_namesakes(
    tmp_path: Path, repo: BackupRepository, dest: Path
) -> None:
    manifest = store(repo, tree_archive(tmp_path))

    restore(repo, manifest, dest, paths=["srv/app/", "./srv/top.txt"])

    assert restored_files(dest) == [
        "srv/app/conf.d/a.conf",
        "srv/app/main.py",
        "srv/app/top-link.txt",
        "srv/top.txt",
    ]  # not srv/application, whose name only starts alike


def test_a_path_not_in_the_archive_is_refused_before_anything_is_written(
    tmp_path: Path, repo: BackupRepository, dest: Path
) -> None:
    manifest = store(repo, tree_archive(tmp_path))
    with pytest.raises(MemberNotFound, match=r"not in the archive: '/srv/nope', 'srv/ap'"):
        restore(repo, manifest, dest, paths=["/srv/app", "/srv/nope", "srv/ap"])
    with pytest.raises(InvalidOptions, match=r"may not contain '\.\.'"):
        restore(repo, manifest, dest, paths=["srv/app/../../etc"])
    assert not dest.exists()


def test_a_hard_link_without_its_file_is_refused_before_anything_is_written(
    tmp_path: Path, repo: BackupRepository, dest: Path
) -> None:
    manifest = store(repo, tree_archive(tmp_path))
    # Whichever of the two names GNU tar met first holds the data; the other, alone, cannot be
    # made.
    [link] = [m for m in members(repo, manifest) if m.type == "hardlink"]
    with pytest.raises(InvalidOptions, match=f"hard link to '{link.link}'"):
        restore(repo, manifest, dest, paths=[link.path])
    assert not dest.exists()
    restore(repo, manifest, dest, paths=[link.path, link.link or ""])
    assert len(restored_files(dest)) == 2


def test_restore_refuses_a_destination_that_is_not_empty(
    tmp_path: Path, repo: BackupRepository, dest: Path
) -> None:
    manifest = store(repo, tree_archive(tmp_path))
    dest.mkdir()
    (dest / "mine").write_text("mine")
    with pytest.raises(InvalidOptions, match="not empty"):
        restore(repo, manifest, dest, paths=["srv/top.txt"])
    restore(repo, manifest, dest, paths=["srv/app/main.py"], overwrite=True)
    assert (dest / "mine").read_text() == "mine"
    assert (dest / "srv" / "app" / "main.py").exists()


def test_select_matches_whole_path_parts() -> None:
    listed = [
        Member(path=p, type="file", size=1, mtime=utcnow(), mode=0o644)
        for p in ("srv/a", "srv/a/b", "srv/ab", "./srv/c")
    ]
    assert [m.path for m in select(listed, ["/srv/a"])] == ["srv/a", "srv/a/b"]
    assert [m.path for m in select(listed, ["srv/c"])] == ["./srv/c"]
    assert select(listed, []) == listed
    assert [m.path for m in select(listed, ["/"])] == [m.path for m in listed]
    assert archive_key("/srv//x/./y/") == "srv/x/y"


# --- listings --------------------------------------------------------------------------------


@pytest.mark.parametrize("compression", ["none", "gzip", "zstd"])
def test_a_backup_without_a_listing_is_listed_from_its_archive(
    tmp_path: Path, repo: BackupRepository, compression: Compression
) -> None:
    manifest = store(repo, tree_archive(tmp_path), compression)
    assert not repo.listing_path(manifest).exists()  # as before listings existed

    listed = members(repo, manifest)

    assert {m.path for m in listed} == {
        "srv",
        "srv/app",
        "srv/app/conf.d",
        "srv/app/conf.d/a.conf",
        "srv/app/main.py",
        "srv/app/top-link.txt",
        "srv/application",
        "srv/application/other",
        "srv/top.txt",
    }
    assert sorted(m.type for m in listed) == ["dir"] * 4 + ["file"] * 4 + ["hardlink"]
    verified: list[Member] = []
    verification = repo.verify(manifest, each=verified.append)
    assert listed == verified
    assert verification.file_count == sum(m.type == "file" for m in listed) == 4


def test_a_listing_is_read_without_the_archive(tmp_path: Path, repo: BackupRepository) -> None:
    manifest = store(repo, tree_archive(tmp_path))
    kept = [Member(path="srv/kept", type="file", size=3, mtime=utcnow(), mode=0o600)]
    write_listing(repo.listing_path(manifest), kept)
    repo.archive_path(manifest).unlink()
    assert members(repo, manifest) == kept


def test_an_encrypted_backup_without_a_listing_needs_its_identity(
    tmp_path: Path, repo: BackupRepository
) -> None:
    manifest = store(repo, b"age-encryption.org/v1 ...")
    encrypted = manifest.model_copy(
        update={
            "recipients": ["age1qqqq"],
            "archive": BackupRepository.archive_name(manifest.backup_id, "none", encrypted=True),
        }
    )
    with pytest.raises(IdentityRequired, match="encrypted: reading its files needs its age"):
        members(repo, encrypted)
    repo.archive_path(manifest).unlink()
    with pytest.raises(ArchiveInvalid, match="is missing"):
        members(repo, manifest)


def test_backups_are_found_in_every_repository(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    one, two = BackupRepository(tmp_path / "one"), BackupRepository(tmp_path / "two")
    first, second = store(one, tar_of(file("a"))), store(two, tar_of(file("b")))
    second = second.model_copy(update={"server_id": first.server_id})
    two.save(second)
    monkeypatch.setenv("MM_BACKUP_ROOT", str(one.root))
    monkeypatch.setenv("MM_BACKUP_ROOTS", str(two.root))
    get_settings.cache_clear()

    assert archive_files.find_backup(second.backup_id)[0].root == two.root
    assert [m.backup_id for m in archive_files.backups_of([first.server_id])] == [
        first.backup_id,
        second.backup_id,
    ]
    with pytest.raises(InvalidOptions, match=f"no backup .* in {one.root}, {two.root}"):
        archive_files.find_backup(uuid4())
