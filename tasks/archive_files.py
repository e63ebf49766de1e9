"""A backup's files: where a backup is, what its archive holds, and restoring some or all of
them without writing anything outside the destination.

- **Where**: `repositories` (MM_BACKUP_ROOT, then MM_BACKUP_ROOTS), `find_backup`,
  `backups_of`, `server_ids`: the CLI and the API shim look for backups the same way.
- **What**: `members` reads the listing written at backup time (tasks/backup.py) or, for a
  backup made before listings existed, the archive itself; `select` picks the members at or
  under some paths, named as in the archive or as on the server (`/srv/x` and `srv/x` alike).
- **Restoring**: `restore` verifies the archive and checks the paths before it writes anything,
  then `extract`s the plain tar stream of `BackupRepository.open_tar` member by member through
  `strict_filter`, and stops at the first member refused or not written, saying what it left.

`strict_filter` is tarfile's `data` filter: no absolute paths (a leading `/` is dropped), no
member or link that leads out of the destination, no device nodes or FIFOs, no setuid, setgid
or sticky bit, no write bit for group or others, owners dropped. Two changes: owners are kept
on request (`same_owner`, root only), and directories keep their modes (masked like files'),
so that a restored `~/.ssh` is not opened to everyone. And checks of our own, which do not
rely on `os.path.realpath` as the data filter of Python 3.11.7 does (CVE-2025-4517 and its
siblings got around that):

- no member name with a `..` part;
- nothing is written through a symlink: a symlink among a member's parent directories is
  refused; whatever stands in a member's own place is removed first, unless both are
  directories (so neither a symlink nor an existing hard link to a file outside is written
  through);
- a symlink's target is resolved in the destination as the kernel would, by a walk of our own
  that fails closed; every symlink written is walked again at the end, because a later member
  can change where an earlier one leads;
- a hard link must name a regular file already in the destination, reached through no symlink.
"""

from __future__ import annotations

import contextlib
import os
import stat
import tarfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC
from pathlib import Path
from typing import IO
from uuid import UUID

from tasks.archive_listing import Member, load_listing, read_members
from tasks.core.errors import IdentityRequired, InvalidOptions, MemberNotFound, RestoreFailed
from tasks.core.settings import get_settings
from tasks.repository import BackupRepository, Manifest

#: Symlinks one resolution follows before it counts as a loop (Linux's MAXSYMLINKS).
MAX_LINK_HOPS = 40
#: Names a failed restore's message quotes; the rest it counts.
QUOTED = 10


# --- where backups are -----------------------------------------------------------------------


def repositories() -> list[BackupRepository]:
    """MM_BACKUP_ROOT, then MM_BACKUP_ROOTS: per-host repositories, mounted where this runs."""
    return [BackupRepository(root) for root in get_settings().paths.search_roots()]


def find_backup(backup_id: UUID | str) -> tuple[BackupRepository, Manifest]:
    """The repository that holds the backup, and its manifest; `InvalidOptions` if none does."""
    first, *others = repositories()
    try:
        return first, first.find(backup_id)
    except InvalidOptions:
        if not others:  # a malformed id, or not here
            raise
    for repository in others:
        with contextlib.suppress(InvalidOptions):
            return repository, repository.find(backup_id)
    searched = ", ".join(str(r.root) for r in (first, *others))
    raise InvalidOptions(f"no backup {backup_id} in {searched}")


def backups_of(servers: Iterable[UUID]) -> list[Manifest]:
    """The servers' backups in every repository, oldest first; manifests that do not parse (or
    were copied from another server's directory) are left out, as `survey` leaves them."""
    found = [
        manifest
        for server_id in servers
        for repository in repositories()
        for manifest in repository.survey(server_id).manifests
    ]
    # survey's order across repositories: a naive time (a hand-made manifest) counts as UTC.
    return sorted(found, key=lambda m: m.started_at.replace(tzinfo=m.started_at.tzinfo or UTC))


def server_ids() -> list[UUID]:
    """Servers with backups in any repository, whether or not the inventory still has them."""
    return sorted({s for repository in repositories() for s in repository.server_ids()}, key=str)


# --- what an archive holds -------------------------------------------------------------------


def members(repository: BackupRepository, manifest: Manifest) -> list[Member]:
    """The archive's members: its listing, or for a backup made before listings existed, read
    from the archive (`IdentityRequired` for an encrypted one, `ArchiveInvalid` without one)."""
    try:
        return load_listing(repository.listing_path(manifest))
    except FileNotFoundError:
        pass
    with repository.open_tar(manifest) as tar:
        return list(read_members(tar))


def archive_key(path: str) -> str:
    """A path as the archive names it: relative to /, no `.` or empty parts. `/srv/x/`,
    `./srv/x` and `srv/x` are all `srv/x`; `/` is `` (the whole archive). `..` stays."""
    return "/".join(part for part in path.split("/") if part not in ("", "."))


def _wanted(path: str) -> str:
    key = archive_key(path)
    if ".." in key.split("/"):
        raise InvalidOptions(f"{path!r}: a path to select may not contain '..'")
    return key


def _under(key: str, wanted: str) -> bool:
    return not wanted or key == wanted or key.startswith(wanted + "/")


def select(listed: Iterable[Member], paths: Sequence[str]) -> list[Member]:
    """The members at or under any of `paths` (all of them for no paths), in archive order;
    `MemberNotFound` names every path that is in no member's."""
    wanted = [_wanted(path) for path in paths]
    every = list(listed)
    if not wanted:
        return every
    keys = [archive_key(m.path) for m in every]
    missing = [p for p, w in zip(paths, wanted, strict=True) if not any(_under(k, w) for k in keys)]
    if missing:
        raise MemberNotFound(f"not in the archive: {', '.join(repr(p) for p in missing)}")
    return [m for m, k in zip(every, keys, strict=True) if any(_under(k, w) for w in wanted)]


def _check_hard_links(chosen: Sequence[Member]) -> None:
    """Tar keeps a hard-linked file's data with its first name only, so a link restored without
    that one could not be made; said before anything is written."""
    before: set[str] = set()
    for member in chosen:
        if member.type == "hardlink" and archive_key(member.link or "") not in before:
            raise InvalidOptions(
                f"{member.path!r} is a hard link to {member.link!r}, which is not among the "
                f"paths to restore; select {member.link!r} too"
            )
        before.add(archive_key(member.path))


# --- restoring -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Restored:
    """What a restore wrote."""

    destination: Path
    #: The members written, named as under `destination`, in archive order.
    written: list[str]


def restore(
    repository: BackupRepository,
    manifest: Manifest,
    destination: Path,
    *,
    paths: Sequence[str] = (),
    overwrite: bool = False,
    same_owner: bool = False,
    identity: Path | None = None,
) -> Restored:
    """Verify the archive, then unpack the members at or under `paths` (all for none) into
    `destination`, which must be empty unless `overwrite`. A path not in the archive, or a hard
    link whose file is not selected, is refused before anything is written. An encrypted
    archive needs its `identity`, and is decrypted on its way in, once to verify, once to
    unpack."""
    if same_owner and os.geteuid() != 0:
        raise InvalidOptions("keeping the owners needs root: only root may give files away")
    if manifest.encrypted and identity is None:
        raise IdentityRequired(
            f"backup {manifest.backup_id} is encrypted; restoring it needs its age identity"
            " (--identity FILE or MM_BACKUP_IDENTITY)"
        )
    listed: list[Member] = []
    repository.verify(manifest, identity, each=listed.append)
    chosen = select(listed, paths)
    if paths:
        _check_hard_links(chosen)
    destination.mkdir(parents=True, exist_ok=True)
    if not overwrite and any(destination.iterdir()):
        raise InvalidOptions(f"{destination} is not empty; pass overwrite to restore into it")
    with repository.open_tar(manifest, identity) as tar:
        written = extract(tar, destination, paths=paths, same_owner=same_owner)
    return Restored(destination=destination, written=written)


class Refused(tarfile.FilterError):
    """A member our checks refuse, beyond the data filter's own (which raises its own
    `FilterError`s)."""

    def __init__(self, member: tarfile.TarInfo, reason: str) -> None:
        self.tarinfo = member
        super().__init__(f"{member.name!r} {reason}")


def extract(
    tar: IO[bytes], destination: Path, *, paths: Sequence[str] = (), same_owner: bool = False
) -> list[str]:
    """Unpack the members of the plain tar stream `tar` at or under `paths` (all for none) into
    `destination`, each through `strict_filter`; returns the names written, in order.

    Stops at the first member refused or not written (a full disk, say) with `RestoreFailed`,
    whose message names it and what was written before it; a file cut short is removed.
    """
    root = destination.resolve()  # the filters compare real paths
    wanted = [_wanted(path) for path in paths]
    written: list[str] = []
    directories: list[tarfile.TarInfo] = []
    symlinks: list[tarfile.TarInfo] = []
    current: str | None = None
    try:
        # errorlevel 2: a mode, time or owner that cannot be set fails too, never only a log line.
        with tarfile.open(fileobj=tar, mode="r|", errorlevel=2) as archive:
            try:
                for member in archive:
                    if wanted and not any(_under(archive_key(member.name), w) for w in wanted):
                        continue
                    current = member.name
                    safe = strict_filter(member, root, same_owner=same_owner)
                    _clear_the_way(root / safe.name, safe)
                    try:
                        # Filtered above; directories get their times and modes last, as in
                        # `extractall`, so that writing their files does not change them after.
                        archive.extract(
                            safe, root, set_attrs=not safe.isdir(), filter="fully_trusted"
                        )
                    except BaseException:
                        _remove_cut_file(root / safe.name, safe)
                        raise
                    written.append(safe.name)
                    if safe.isdir():
                        directories.append(safe)
                    elif safe.issym():
                        symlinks.append(safe)
                current = None
                _unlink_links_leading_out(root, symlinks, written)
            except BaseException:
                # What is left is left as it would be after a whole restore, modes included;
                # the reason reported stays the first one.
                with contextlib.suppress(tarfile.TarError, OSError):
                    _finish_directories(archive, root, directories)
                raise
            _finish_directories(archive, root, directories)
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise RestoreFailed(_failure(destination, current, exc, written), written=written) from exc
    return written


def _finish_directories(
    archive: tarfile.TarFile, destination: Path, directories: Sequence[tarfile.TarInfo]
) -> None:
    """Owners, times and modes of the directories written, deepest first."""
    for directory in sorted(directories, key=lambda d: d.name, reverse=True):
        path = destination / directory.name
        if path.is_dir() and not path.is_symlink():  # not replaced by a later member
            archive.chown(directory, str(path), numeric_owner=False)
            archive.utime(directory, str(path))
            archive.chmod(directory, str(path))


def strict_filter(
    member: tarfile.TarInfo, destination: Path, *, same_owner: bool = False
) -> tarfile.TarInfo:
    """`member` as it may be written under `destination` (a resolved path) now; a
    `tarfile.FilterError` that names it if it may not. See the module's docstring."""
    safe = tarfile.data_filter(member, str(destination))
    parts = safe.name.split("/")
    if ".." in parts:
        raise Refused(member, "has a '..' in its path")
    _refuse_symlinks(member, destination, parts[:-1])
    if safe.issym() and not _resolves_inside(destination, [*parts[:-1], *safe.linkname.split("/")]):
        raise Refused(member, f"is a symlink to {safe.linkname!r}, out of the destination")
    if safe.islnk():
        link = safe.linkname.split("/")  # never absolute: the data filter refused that
        if ".." in link:
            raise Refused(member, f"is a hard link to {safe.linkname!r}, which has a '..'")
        _refuse_symlinks(member, destination, link[:-1])
        try:
            linked = os.lstat(destination.joinpath(*link)).st_mode
        except FileNotFoundError:
            linked = 0
        if not stat.S_ISREG(linked):
            raise Refused(
                member, f"is a hard link to {safe.linkname!r}, which is no file restored before it"
            )
    changes: dict[str, object] = {}
    if member.isdir() and member.mode is not None:
        changes["mode"] = member.mode & 0o755  # the data filter leaves directories at umask's
    if same_owner:
        changes.update(uid=member.uid, gid=member.gid, uname=member.uname, gname=member.gname)
    return safe.replace(**changes, deep=False) if changes else safe  # type: ignore[arg-type]


def _refuse_symlinks(member: tarfile.TarInfo, destination: Path, parts: Sequence[str]) -> None:
    """Refuse `member` if an existing symlink is on the path `parts` below `destination`."""
    path = destination
    for part in parts:
        if part in ("", "."):
            continue
        path = path / part
        try:
            mode = os.lstat(path).st_mode
        except FileNotFoundError:
            return  # tarfile creates the rest as directories
        if stat.S_ISLNK(mode):
            through = str(path.relative_to(destination))
            raise Refused(member, f"goes through the symlink {through!r}; nothing is written so")


def _resolves_inside(destination: Path, parts: Sequence[str]) -> bool:
    """Whether the relative path `parts` stays in `destination`, each symlink met there followed
    as the kernel would (`..` after a symlink goes up from where it led); a loop is outside."""
    todo = list(reversed(parts))
    here: list[str] = []
    hops = 0
    while todo:
        part = todo.pop()
        if part in ("", "."):
            continue
        if part == "..":
            if not here:
                return False
            here.pop()
            continue
        path = destination.joinpath(*here, part)
        if not path.is_symlink():
            here.append(part)  # a directory, a file, or nothing yet: the walk goes on by name
            continue
        hops += 1
        target = os.readlink(path)
        if hops > MAX_LINK_HOPS or target.startswith("/"):
            return False
        todo.extend(reversed(target.split("/")))
    return True


def _clear_the_way(target: Path, member: tarfile.TarInfo) -> None:
    """Remove what stands where `member` goes, unless both are directories: a symlink there
    would be followed, an existing file may be a hard link to one outside."""
    try:
        mode = os.lstat(target).st_mode
    except FileNotFoundError:
        return
    if stat.S_ISDIR(mode):
        return  # kept for a directory; for anything else tarfile's error says what is there
    target.unlink()


def _remove_cut_file(target: Path, member: tarfile.TarInfo) -> None:
    if member.isreg() and not target.is_dir():
        with contextlib.suppress(OSError):
            target.unlink()


def _unlink_links_leading_out(
    destination: Path, symlinks: Sequence[tarfile.TarInfo], written: list[str]
) -> None:
    """Walk each symlink written again: a later member (a symlink it goes through, replaced)
    can have turned one that led inside when written into one that leads out."""
    leading_out = [
        link
        for link in symlinks
        if (destination / link.name).is_symlink()
        and os.readlink(destination / link.name) == link.linkname
        and not _resolves_inside(
            destination, [*link.name.split("/")[:-1], *link.linkname.split("/")]
        )
    ]
    for link in leading_out:
        (destination / link.name).unlink()
        written.remove(link.name)
    if leading_out:
        raise Refused(
            leading_out[0],
            f"is a symlink to {leading_out[0].linkname!r}, which a later member turned out of "
            f"the destination; removed ({len(leading_out)} such)",
        )


def plural(count: int, noun: str) -> str:
    """`1 member`, `2 members`."""
    return f"{count} {noun}{'' if count == 1 else 's'}"


def _failure(
    destination: Path, member: str | None, exc: BaseException, written: Sequence[str]
) -> str:
    """The message of a failed restore: what stopped it, where, and what it left."""
    if isinstance(exc, tarfile.FilterError):
        what = f"refused {exc}"
    elif member is not None:
        what = f"stopped at {member!r}: {exc}"
    else:
        what = f"stopped: {exc}"
    if not written:
        left = "It wrote nothing there."
    else:
        quoted = ", ".join(repr(name) for name in written[:QUOTED])
        more = f" and {len(written) - QUOTED} more" if len(written) > QUOTED else ""
        left = f"It left {plural(len(written), 'member')} there: {quoted}{more}."
    return f"restore into {destination} {what}. {left}"
