"""The backup repository on local disk: one archive and one manifest per backup.

Layout: `<root>/<serverId>/<backupId>.tar[.gz|.zst]` beside `<backupId>.json` and the member
listing `<backupId>.files.jsonl`. Ids are UUIDs, so no id can name a path outside the root.
Archives are written through `atomic_file`; the manifest says `completed` only after the archive
is renamed into place and verified, and its listing written. A backup is deleted (`forget`) by
first renaming its manifest to a hidden `.<backupId>.forget` tombstone. What an archive holds
is read through `open_tar` alone; listing and restoring its files: tasks/archive_files.py.
"""

from __future__ import annotations

import builtins
import contextlib
import fcntl
import gzip
import hashlib
import os
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import IO, Literal, cast
from uuid import UUID

from pydantic import BaseModel, ConfigDict, model_validator
from pydantic.alias_generators import to_camel

from tasks.archive_listing import Member, load_listing, read_members
from tasks.atomic import HashingWriter, atomic_file, fsync_dir, write_atomic
from tasks.core.errors import ArchiveInvalid, BackupInProgress, IdentityRequired, InvalidOptions
from tasks.encryption import decrypting, read_plaintext
from tasks.lifeline import tied_to_this_process

Compression = Literal["none", "gzip", "zstd"]

#: File suffix and the flag that makes GNU tar read it.
CODECS: dict[str, tuple[str, list[str]]] = {
    "none": (".tar", []),
    "gzip": (".tar.gz", ["--gzip"]),
    "zstd": (".tar.zst", ["--zstd"]),
}


def readable_codecs() -> set[Compression]:
    """The codecs this host can read an archive back in (verify, restore): GNU tar runs the
    codec's own program, so gzip and zstd count only when it is installed here."""
    programs: tuple[Compression, ...] = ("gzip", "zstd")
    return {"none", *(codec for codec in programs if shutil.which(codec))}


#: Suffix of an archive encrypted in the age format (what `age --decrypt` reads).
AGE_SUFFIX = ".age"
#: Suffix of a backup's member listing beside its manifest (not `.json`: manifests are those).
LISTING_SUFFIX = ".files.jsonl"


class BackupStatus(StrEnum):
    """Where a backup stands, as its manifest records it."""

    #: The transfer is under way (or was, when a crash interrupted it).
    RUNNING = "running"
    #: The archive is in place and matched its checksum.
    COMPLETED = "completed"
    #: The backup failed; any partial archive was removed.
    FAILED = "failed"
    #: It was completed, and a later check found its archive missing or not matching its
    #: checksum: kept for the operator to look at, never counted as a good backup.
    CORRUPT = "corrupt"


class Manifest(BaseModel):
    """What we know of one backup; written as camelCase JSON beside the archive."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True)

    backup_id: UUID
    server_id: UUID
    server_name: str
    user_id: str | None = None
    job_id: UUID | None = None
    job_type: str
    type: Literal["full"] = "full"
    compression: Compression = "none"
    paths: list[str]
    archive: str
    size: int | None = None
    file_count: int | None = None
    sha256: str | None = None
    started_at: datetime
    finished_at: datetime | None = None
    status: BackupStatus = BackupStatus.RUNNING
    error: str | None = None
    #: The age public keys (`age1...`) the archive is encrypted to; empty for a plain archive.
    recipients: list[str] = []
    #: sha256 of the tar stream as the server sent it, before encryption (for a plain archive,
    #: `sha256` itself): what a restore with the identity checks.
    plaintext_sha256: str | None = None
    #: When a check last re-read the stored archive and found it matching (None: never since
    #: the backup was written and verified).
    checked_at: datetime | None = None
    #: The pre command ran and the post command has not yet: a run that died here left the
    #: server as pre left it (a stopped service), and the next try runs post first.
    post_pending: bool = False

    @model_validator(mode="after")
    def _archive_beside_manifest(self) -> Manifest:
        # An edited manifest must not point restore or cleanup at a file outside the repository.
        expected = BackupRepository.archive_name(
            self.backup_id, self.compression, encrypted=self.encrypted
        )
        if self.archive != expected:
            raise ValueError(f"archive must be {expected!r}, not {self.archive!r}")
        return self

    @property
    def encrypted(self) -> bool:
        return bool(self.recipients)


class Survey(BaseModel):
    """What a server's directory holds, as far as we understand it."""

    #: Manifests that parse, belong to the server and sit under their own id's name; oldest first.
    manifests: list[Manifest]
    #: `.json` files that are not such manifests: left alone, reported.
    unreadable: list[Path]


class Verification(BaseModel):
    """The result of checking an archive against its manifest."""

    backup_id: UUID
    size: int
    sha256: str
    file_count: int
    #: An encrypted archive was decrypted and its plaintext checked too (an identity was given);
    #: False for one checked by its stored bytes alone, and for a plain archive.
    decrypted: bool = False


class BackupRepository:
    """Archives and manifests under one root directory."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def server_dir(self, server_id: UUID) -> Path:
        return self.root / str(UUID(str(server_id)))

    def manifest_path(self, server_id: UUID, backup_id: UUID) -> Path:
        return self.server_dir(server_id) / f"{UUID(str(backup_id))}.json"

    def archive_path(self, manifest: Manifest) -> Path:
        return self.server_dir(manifest.server_id) / manifest.archive

    @staticmethod
    def archive_name(backup_id: UUID, compression: Compression, *, encrypted: bool = False) -> str:
        suffix = CODECS[compression][0] + (AGE_SUFFIX if encrypted else "")
        return f"{UUID(str(backup_id))}{suffix}"

    def listing_path(self, manifest: Manifest) -> Path:
        """The archive's member listing, one JSON object per line, written at backup time so
        that browsing needs neither the identity nor a read of the whole archive."""
        return self.server_dir(manifest.server_id) / f"{manifest.backup_id}{LISTING_SUFFIX}"

    def read(self, server_id: UUID, backup_id: UUID) -> Manifest | None:
        path = self.manifest_path(server_id, backup_id)
        try:
            return Manifest.model_validate_json(path.read_bytes())
        except FileNotFoundError:
            return None

    def save(self, manifest: Manifest) -> None:
        write_atomic(
            self.manifest_path(manifest.server_id, manifest.backup_id),
            manifest.model_dump_json(by_alias=True, indent=2).encode(),
        )

    def find(self, backup_id: UUID | str) -> Manifest:
        """The manifest of a backup, whichever server it belongs to."""
        try:
            wanted = UUID(str(backup_id))
        except ValueError:
            raise InvalidOptions(f"{backup_id!r} is not a backup id (a UUID)") from None
        for path in self.root.glob(f"*/{wanted}.json"):
            return Manifest.model_validate_json(path.read_bytes())
        raise InvalidOptions(f"no backup {wanted} in {self.root}")

    def server_ids(self) -> list[UUID]:
        """Servers with a directory here; directories not named by a UUID are not ours."""
        if not self.root.is_dir():
            return []
        found = []
        for path in self.root.iterdir():
            try:
                server_id = UUID(path.name)
            except ValueError:
                continue
            if path.is_dir() and str(server_id) == path.name:
                found.append(server_id)
        return sorted(found, key=str)

    def survey(self, server_id: UUID) -> Survey:
        """Every manifest of a server that we understand, and the `.json` files we do not."""
        manifests: list[Manifest] = []
        unreadable: list[Path] = []
        for path in sorted(self.server_dir(server_id).glob("*.json")):
            try:
                manifest = Manifest.model_validate_json(path.read_bytes())
            except (OSError, ValueError):
                unreadable.append(path)
                continue
            if manifest.server_id != server_id or path.name != f"{manifest.backup_id}.json":
                unreadable.append(path)  # copied or renamed by hand: not ours to delete
                continue
            manifests.append(manifest)
        # A naive time (a hand-made manifest) counts as UTC rather than failing the sort.
        manifests.sort(key=lambda m: m.started_at.replace(tzinfo=m.started_at.tzinfo or UTC))
        return Survey(manifests=manifests, unreadable=unreadable)

    def tombstone_path(self, manifest: Manifest) -> Path:
        return self.server_dir(manifest.server_id) / f".{manifest.backup_id}.forget"

    def forget(self, manifest: Manifest) -> None:
        """Delete a backup: its archive and its manifest, together even across a crash.

        The manifest is renamed to a hidden tombstone first, so in one atomic step the backup
        leaves `list`, `find` and `survey`; then the archive goes, then the tombstone. A crash
        in between leaves a tombstone that `finish_forgets` completes.
        """
        tombstone = self.tombstone_path(manifest)
        self.manifest_path(manifest.server_id, manifest.backup_id).replace(tombstone)
        fsync_dir(tombstone.parent)
        self._bury(manifest, tombstone)

    def finish_forgets(self, server_id: UUID) -> list[Manifest]:
        """Complete deletions a crash interrupted; returns the backups that went."""
        finished = []
        for tombstone in sorted(self.server_dir(server_id).glob(".*.forget")):
            try:
                manifest = Manifest.model_validate_json(tombstone.read_bytes())
            except (OSError, ValueError):
                continue  # not one of ours
            if manifest.server_id != server_id or tombstone != self.tombstone_path(manifest):
                continue
            self._bury(manifest, tombstone)
            finished.append(manifest)
        return finished

    def _bury(self, manifest: Manifest, tombstone: Path) -> None:
        self.archive_path(manifest).unlink(missing_ok=True)
        self.listing_path(manifest).unlink(missing_ok=True)
        fsync_dir(tombstone.parent)
        tombstone.unlink(missing_ok=True)
        fsync_dir(tombstone.parent)

    def list(self, server_id: UUID) -> list[Manifest]:
        """Backups of a server, oldest first."""
        manifests = [
            Manifest.model_validate_json(path.read_bytes())
            for path in self.server_dir(server_id).glob("*.json")
        ]
        return sorted(manifests, key=lambda m: m.started_at)

    @contextlib.contextmanager
    def open_archive(self, manifest: Manifest) -> Iterator[HashingWriter]:
        """A writer for the archive; see `atomic_file` (nothing visible until it succeeds).

        Only one run writes a backup id at a time (an exclusive `flock` on its lock file, which
        the kernel drops when the run dies): a second one would remove the first one's
        temp file as a crashed attempt's, under its feet. The file goes when the writer is
        done, still holding the lock, so that no lock file outlives its backup.
        """
        directory = self.server_dir(manifest.server_id)
        directory.mkdir(parents=True, exist_ok=True)
        lock_path = directory / f".{manifest.backup_id}.lock"
        lock = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        held = False
        try:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise BackupInProgress(
                    f"backup {manifest.backup_id}: another run is writing it now"
                ) from None
            held = True
            self.remove_partials(manifest)
            with atomic_file(
                self.archive_path(manifest), temp_prefix=f".{manifest.backup_id}."
            ) as archive:
                yield archive
        finally:
            if held:
                lock_path.unlink(missing_ok=True)
            os.close(lock)

    def present(self, manifest: Manifest) -> bool:
        """Whether the archive is in place at the size its manifest says: one `stat`, no read
        (a check re-reads it, tasks/archive_checks.py); what retention asks of a good backup."""
        try:
            found = self.archive_path(manifest).stat()
        except FileNotFoundError:
            return False
        return stat.S_ISREG(found.st_mode) and manifest.size in (None, found.st_size)

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        """The repository's lock for changing completed backups' manifests, waited for.

        Retention holds it while it forgets a server's backups, a check while it writes what it
        found: without it a check could write back a manifest that retention has just turned
        into a tombstone, bringing a deleted backup back. The kernel drops it when its holder
        dies.
        """
        self.root.mkdir(parents=True, exist_ok=True)
        lock = os.open(self.root / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield
        finally:
            os.close(lock)

    def remove_partials(self, manifest: Manifest) -> None:
        """Temp files a crashed earlier attempt of this backup left behind."""
        for stale in self.server_dir(manifest.server_id).glob(f".{manifest.backup_id}.*.partial"):
            stale.unlink(missing_ok=True)

    def verify(
        self,
        manifest: Manifest,
        identity: Path | None = None,
        *,
        each: Callable[[Member], object] | None = None,
    ) -> Verification:
        """Check size and sha256 against the manifest, then read every member's header; `each`
        is given every member of that pass, in order, so that a backup's listing costs no
        second read (and none is kept here: `tasks.archive_listing.listing_file`).

        An encrypted archive without `identity`: its stored bytes only (the file count is the
        one its backup listed; `each` gets nothing). With it, the archive is decrypted: the
        plaintext's sha256 and its members must match the manifest and the listing written at
        backup time.
        """
        path = self.archive_path(manifest)
        if not path.is_file():
            raise ArchiveInvalid(f"backup {manifest.backup_id}: archive {path} is missing")
        digest = hashlib.sha256()
        size = 0
        with path.open("rb", buffering=0) as archive:
            while chunk := archive.read(1 << 20):
                digest.update(chunk)
                size += len(chunk)
        if manifest.sha256 is not None and digest.hexdigest() != manifest.sha256:
            raise ArchiveInvalid(
                f"backup {manifest.backup_id}: sha256 {digest.hexdigest()} does not match "
                f"the manifest's {manifest.sha256}"
            )
        if manifest.size is not None and size != manifest.size:
            raise ArchiveInvalid(
                f"backup {manifest.backup_id}: {size} bytes, the manifest says {manifest.size}"
            )
        if not manifest.encrypted:
            with self.open_tar(manifest) as tar:
                file_count = _count_files(read_members(tar), each)
        elif identity is None:
            file_count = manifest.file_count or 0
        else:
            file_count = _count_files(self._verify_plaintext(manifest, identity), each)
        return Verification(
            backup_id=manifest.backup_id,
            size=size,
            sha256=digest.hexdigest(),
            file_count=file_count,
            decrypted=manifest.encrypted and identity is not None,
        )

    def _verify_plaintext(self, manifest: Manifest, identity: Path) -> builtins.list[Member]:
        """Decrypt the archive: its plaintext sha256 and members as its backup recorded them;
        returns the members."""
        plain = read_plaintext(self.archive_path(manifest), identity, manifest.compression)
        name = f"backup {manifest.backup_id}"
        if manifest.plaintext_sha256 is not None and plain.sha256 != manifest.plaintext_sha256:
            raise ArchiveInvalid(
                f"{name}: decrypted sha256 {plain.sha256} does not match the manifest's "
                f"{manifest.plaintext_sha256}"
            )
        listing = self.listing_path(manifest)
        if listing.is_file() and load_listing(listing) != plain.members:
            raise ArchiveInvalid(f"{name}: the decrypted members differ from {listing}")
        return plain.members

    @contextlib.contextmanager
    def open_tar(self, manifest: Manifest, identity: Path | None = None) -> Iterator[IO[bytes]]:
        """The archive as a plain tar stream: the one reader of what an archive holds (verify,
        listing, restore); an encrypted one is decrypted with `identity` on its way in."""
        if manifest.encrypted and identity is None:
            raise IdentityRequired(
                f"backup {manifest.backup_id} is encrypted: reading its files needs its age"
                " identity (--identity FILE or MM_BACKUP_IDENTITY)"
            )
        path = self.archive_path(manifest)
        if not path.is_file():
            raise ArchiveInvalid(f"backup {manifest.backup_id}: archive {path} is missing")
        if identity is None or not manifest.encrypted:
            with path.open("rb") as stored, _plain_tar(stored, manifest.compression) as tar:
                yield tar
            return
        with decrypting(path, identity) as plain, _plain_tar(plain, manifest.compression) as tar:
            yield tar


@contextlib.contextmanager
def _plain_tar(stored: IO[bytes], compression: Compression) -> Iterator[IO[bytes]]:
    """`stored` decompressed: gzip in-process, zstd through `zstd -dc` (Python 3.11 has no
    zstd). A block left without an error reads the stream to its end, so that a damaged tail
    (gzip's CRC, a cut zstd frame) fails here, although tar's end-of-archive came before it."""
    if compression == "none":
        yield stored
        return
    if compression == "gzip":
        # typeshed's GzipFile is no IO[bytes], though it reads like one.
        with cast(IO[bytes], gzip.GzipFile(fileobj=stored, mode="rb")) as unzipped:
            yield unzipped
            _drain(unzipped, compression)
        return
    with (
        tempfile.TemporaryFile() as errors,
        subprocess.Popen(
            ["zstd", "--decompress", "--stdout", "--quiet"],
            stdin=stored,
            stdout=subprocess.PIPE,
            stderr=errors,
            preexec_fn=tied_to_this_process(),
        ) as zstd,
    ):
        assert zstd.stdout is not None
        try:
            yield zstd.stdout
            _drain(zstd.stdout, compression)
        except BaseException:
            zstd.kill()
            raise
        zstd.stdout.close()
        if zstd.wait() != 0:
            errors.seek(0)
            message = errors.read().decode(errors="replace").strip()[-500:]
            raise ArchiveInvalid(f"zstd cannot decompress the archive: {message}")


def _count_files(members: Iterable[Member], each: Callable[[Member], object] | None) -> int:
    """The regular files among `members`, every member handed to `each` on the way."""
    files = 0
    for member in members:
        files += member.type == "file"
        if each is not None:
            each(member)
    return files


def _drain(stream: IO[bytes], compression: Compression) -> None:
    try:
        while stream.read(1 << 20):
            pass
    except (OSError, EOFError) as exc:
        raise ArchiveInvalid(f"the archive's {compression} stream is damaged: {exc}") from exc


def utcnow() -> datetime:
    return datetime.now(UTC)
