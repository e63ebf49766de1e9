"""Tasks of a backup: plan it on the server, record it, stream the tar, verify and record."""

from __future__ import annotations

import contextlib
import shlex
from collections.abc import Iterable
from dataclasses import dataclass, field
from uuid import UUID

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from tasks.archive_listing import ListingWriter, listing_file
from tasks.atomic import HashingWriter
from tasks.core.errors import InvalidOptions, RemoteCommandFailed, RemotePathMissing
from tasks.core.inventory import Server
from tasks.core.jobs import BackupOptions, backup_recipients, backup_spec
from tasks.core.settings import get_settings
from tasks.encryption import EncryptingWriter, check_tools, encrypting
from tasks.outcome import command_output_logger, failure_published
from tasks.progress import Progress
from tasks.remote import Connection, run_once, session_for
from tasks.repository import (
    BackupRepository,
    BackupStatus,
    Compression,
    Manifest,
    readable_codecs,
    utcnow,
)
from tasks.retry import RETRY_POLICY
from tasks.ssh import open_session

# Paths arrive as positional parameters ("$@"), never spliced into the script text. A path that
# is a symbolic link is reported: tar would store the link alone, never what it points to.
_PLAN_SCRIPT = r"""
status=0
for p do
  if [ -L "$p" ]; then
    if [ -d "$p" ]; then printf 'linked\t%s\n' "$p"
    else printf 'link\t%s\t%s\n' "$p" "$(readlink "$p")"; status=3; fi
  elif [ ! -e "$p" ]; then printf 'missing\t%s\n' "$p"; status=3; fi
done
[ "$status" = 0 ] || exit 3
for c in zstd gzip; do command -v "$c" >/dev/null 2>&1 && printf 'codec\t%s\n' "$c"; done
find -H "$@" -type f -printf '%s\n' 2>/dev/null |
  awk '{n++; s+=$1} END {printf "estimate\t%.0f\t%.0f\n", n, s}'
exit 0
"""

#: Given `dir/.` for a path that is a symbolic link to a directory (`BackupPlan.followed`), tar
#: reads the directory it points to; these make its members `dir/...` again, as if the path
#: were the directory itself (`s,/\./,/,`: `.` is a no-op step; symlink targets are left alone).
FOLLOW_TRANSFORMS = (r"--transform=s,/\./,/,gS", r"--transform=s,/\.$,,S")

#: GNU tar exits 1 when a file changed while it was read: the archive is still whole.
TAR_OK = (0, 1)
TAR_BLOCK = 512


@dataclass(frozen=True)
class BackupPlan:
    """What the server told us before the transfer."""

    compression: Compression
    estimated_bytes: int
    estimated_files: int
    #: The age public keys to encrypt to; empty: a plain archive.
    recipients: tuple[str, ...] = ()
    #: Paths (as in the inventory) that are symbolic links to directories: tar follows them.
    followed: tuple[str, ...] = ()


def repository() -> BackupRepository:
    return BackupRepository(get_settings().paths.backup_root)


def _bare(path: str) -> str:
    """A path without trailing slashes: tar drops them (`/srv/link/` is still the link to it),
    while the shell's `[ -L ]` would look through the link."""
    return path.rstrip("/") or "/"


def plan_command(paths: list[str]) -> list[str]:
    """The remote check of the paths: each one a positional parameter of the script."""
    return ["sh", "-c", _PLAN_SCRIPT, "sh", *(_bare(path) for path in paths)]


def tar_command(
    paths: list[str], compression: Compression, followed: Iterable[str] = ()
) -> list[str]:
    """The remote tar: members relative to / and every path after `--`, so none is an option;
    each path of `followed` (a symbolic link to a directory) as `dir/.`, so tar reads the
    directory, with `FOLLOW_TRANSFORMS` naming its members as below the path."""
    argv = ["tar", "--create", "--file=-", "--directory=/"]
    if compression == "zstd":
        argv.append("--use-compress-program=zstd -T0 -3 -q")
    elif compression == "gzip":
        argv.append("--gzip")
    follow = {_bare(path) for path in followed}
    if follow:
        argv.extend(FOLLOW_TRANSFORMS)
    members = []
    for path in paths:
        member = _bare(path).lstrip("/") or "."
        members.append(f"{member}/." if _bare(path) in follow else member)
    return [*argv, "--", *members]


def choose_compression(
    options: BackupOptions, available: set[str], server: Server, readable: set[Compression]
) -> Compression:
    """The codec of a backup: one the server has (`available`) and this host can read back
    (`readable`, `readable_codecs`), since the archive is verified here before it counts.

    zstd asked for by name but unreadable here falls back to gzip (or none), recorded in the
    manifest, rather than failing after the whole transfer; a codec the server lacks is refused.
    """
    wanted = options.wanted_compression
    if wanted == "none":
        return "none"
    usable = [codec for codec in ("zstd", "gzip") if codec in available and codec in readable]
    if wanted == "auto":
        return usable[0] if usable else "none"
    if wanted not in available:
        raise InvalidOptions(
            f"{server.name}: compression {wanted!r} asked, but {wanted} is not "
            "installed on the server"
        )
    if wanted not in readable:
        return "gzip" if "gzip" in usable else "none"
    return wanted


@dataclass
class PlanAnswer:
    """What `_PLAN_SCRIPT` printed."""

    missing: list[str] = field(default_factory=list)
    codecs: set[str] = field(default_factory=set)
    #: Regular files under the paths, and their bytes.
    files: int = 0
    size: int = 0
    #: Paths that are symbolic links to directories.
    linked: list[str] = field(default_factory=list)
    #: Paths that are symbolic links to something else (a file, nothing), with their targets.
    links: list[tuple[str, str]] = field(default_factory=list)


def parse_plan(output: str) -> PlanAnswer:
    """Missing paths, codecs, file and byte counts and symbolic links from `_PLAN_SCRIPT`."""
    answer = PlanAnswer()
    for line in output.splitlines():
        kind, _, rest = line.partition("\t")
        if kind == "missing":
            answer.missing.append(rest)
        elif kind == "codec":
            answer.codecs.add(rest)
        elif kind == "linked":
            answer.linked.append(rest)
        elif kind == "link":
            path, _, target = rest.partition("\t")
            answer.links.append((path, target))
        elif kind == "estimate":
            count, _, total = rest.partition("\t")
            answer.files, answer.size = int(count), int(total)
    return answer


@task(name="verify server", cache_policy=NO_CACHE, **RETRY_POLICY)
def plan_backup(
    server: Server, options: BackupOptions, connection: Connection | None = None
) -> BackupPlan:
    """Connect, check every path exists, pick the codec and estimate the size."""
    spec = backup_spec(server)
    paths = spec.paths
    # Before the server is asked anything: encryption without a recipient fails at once.
    recipients = backup_recipients(options, spec, get_settings().encryption)
    with session_for(server, connection, open_session) as ssh:
        result = ssh.run(plan_command(paths), check=False)
    answer = parse_plan(result.text)
    if result.exit_status == 3 and answer.links and not answer.missing:
        # Only a directory's link is followed: tar has no way to follow one to a file alone.
        raise InvalidOptions(
            f"{server.name}: "
            + ", ".join(
                f"{shlex.quote(path)} is a symbolic link to "
                + (shlex.quote(target) if target else "something")
                + ", which is not a directory; list what it points to instead"
                for path, target in answer.links
            )
        )
    if result.exit_status == 3:
        raise RemotePathMissing(
            f"{server.name}: {', '.join(shlex.quote(p) for p in answer.missing)} not found on "
            "the server"
        )
    if result.exit_status != 0:
        raise RemoteCommandFailed(
            f"{server.name}: checking the backup paths failed with status {result.exit_status}: "
            f"{result.stderr_tail()}",
            exit_status=result.exit_status,
            stderr_tail=result.stderr_tail(),
        )
    compression = choose_compression(options, answer.codecs, server, readable_codecs())
    if options.wanted_compression not in ("auto", compression):
        get_run_logger().warning(
            "%s: %s asked, but this host cannot read such archives back to verify them"
            " (install it here); using %s",
            server.name,
            options.wanted_compression,
            compression,
        )
    if recipients:
        check_tools(compression)
    return BackupPlan(
        compression=compression,
        # tar adds a header block per member and pads each file to a block.
        estimated_bytes=answer.size + answer.files * 2 * TAR_BLOCK,
        estimated_files=answer.files,
        followed=tuple(path for path in paths if _bare(path) in answer.linked),
        recipients=tuple(recipients),
    )


def create_backup_record(
    server: Server,
    backup_id: UUID,
    job_id: UUID | None,
    user_id: str | None,
    job_type: str,
    plan: BackupPlan,
) -> Manifest:
    """The manifest of this backup: a completed earlier one is returned as it is.

    Not a task, as the failure record below: local files, written by the flow itself (three
    state events each as tasks: what they cost Prefect's server outweighed the work).
    """
    repo = repository()
    existing = repo.read(server.id, backup_id)
    if existing is not None and existing.status is BackupStatus.COMPLETED:
        get_run_logger().info("backup %s is already complete; not transferring again", backup_id)
        return existing
    assert server.backup is not None
    manifest = Manifest(
        backup_id=backup_id,
        server_id=server.id,
        server_name=server.name,
        user_id=user_id,
        job_id=job_id,
        job_type=job_type,
        compression=plan.compression,
        paths=list(server.backup.paths),
        archive=BackupRepository.archive_name(
            backup_id, plan.compression, encrypted=bool(plan.recipients)
        ),
        recipients=list(plan.recipients),
        started_at=utcnow(),
    )
    repo.save(manifest)
    return manifest


@task(name="run hook", cache_policy=NO_CACHE, **RETRY_POLICY)
def run_hook(
    server: Server, which: str, command: str, connection: Connection | None = None
) -> None:
    """Run the inventory's pre or post command on the server."""
    logger = get_run_logger()
    # Never the command's text: it may hold a token, and logs reach more eyes than admins'.
    logger.info("%s: running the %s command", server.name, which)
    output = command_output_logger()
    with failure_published(), session_for(server, connection, open_session) as ssh:
        run_once(
            ssh,
            command,
            lambda stream, line: output.info("%s %s: %s", which, stream, line),
            timeout=get_settings().ssh.idle_timeout,
            label=f"the {which} command",
        )


@task(name="transfer archive", cache_policy=NO_CACHE, **RETRY_POLICY)
def transfer_archive(
    server: Server,
    manifest: Manifest,
    plan: BackupPlan,
    progress: Progress,
    connection: Connection | None = None,
) -> Manifest:
    """Stream tar from the server into the repository; size and sha256 computed on the way.

    An encrypted backup's tar goes through age (`tasks.encryption`) on its way to the file; its
    plaintext's sha256 and member listing are taken on the way too, as no later reader here
    can decrypt it.
    """
    repo = repository()
    progress.milestone(40, "transfer started")
    with (
        session_for(server, connection, open_session) as ssh,
        repo.open_archive(manifest) as archive,
        # Inside: opening the archive removes the partial files an earlier try left. It is
        # in place just before the archive, and only the completed manifest vouches for either.
        _listing_during_transfer(repo, manifest) as listing,
        _encrypted(manifest, archive, listing) as sink,
    ):
        result = ssh.download(
            tar_command(manifest.paths, manifest.compression, plan.followed),
            sink,
            on_progress=lambda size: progress.between(
                40, 90, size, plan.estimated_bytes, "transferring"
            ),
        )
        if result.exit_status not in TAR_OK:
            # Raised inside `open_archive`: the partial file is removed.
            raise RemoteCommandFailed(
                f"{server.name}: tar exited with status {result.exit_status}: "
                f"{result.stderr_tail()}",
                exit_status=result.exit_status,
                stderr_tail=result.stderr_tail(),
            )
        if result.exit_status == 1:
            get_run_logger().warning(
                "%s: files changed while they were read: %s", server.name, result.stderr_tail()
            )
    progress.milestone(90, "transfer done")
    stored = {"size": archive.size, "sha256": archive.sha256}
    if isinstance(sink, EncryptingWriter):
        assert listing is not None
        stored |= {"plaintext_sha256": sink.sha256, "file_count": listing.files}
    return manifest.model_copy(update=stored)


def _listing_during_transfer(
    repo: BackupRepository, manifest: Manifest
) -> contextlib.AbstractContextManager[ListingWriter | None]:
    """An encrypted archive's listing, taken from its plaintext on the way (no later reader
    here can decrypt it); a plain one's is written by its verification."""
    if not manifest.encrypted:
        return contextlib.nullcontext(None)
    return listing_file(repo.listing_path(manifest))


def _encrypted(
    manifest: Manifest, archive: HashingWriter, listing: ListingWriter | None
) -> contextlib.AbstractContextManager[HashingWriter | EncryptingWriter]:
    """What the transfer writes into: `archive` itself, or age in front of it."""
    if not manifest.encrypted:
        return contextlib.nullcontext(archive)
    assert listing is not None
    return encrypting(archive, manifest.recipients, manifest.compression, listing.add)


def set_post_pending(manifest: Manifest, pending: bool) -> Manifest:
    """Record whether the post command is owed (after pre, before post), before it happens."""
    marked = manifest.model_copy(update={"post_pending": pending})
    repository().save(marked)
    return marked


def post_left_pending(server: Server, backup_id: UUID) -> bool:
    """Whether an earlier try of this backup ran the pre command and died before post."""
    earlier = repository().read(server.id, backup_id)
    return earlier is not None and earlier.post_pending


def clear_post_pending(server: Server, backup_id: UUID) -> None:
    stored = repository().read(server.id, backup_id)
    if stored is not None and stored.post_pending:
        set_post_pending(stored, False)


@task(name="update backup record", cache_policy=NO_CACHE)
def complete_backup_record(manifest: Manifest) -> Manifest:
    """Verify the archive against the transfer's checksum, keep its member listing, then mark
    the backup completed."""
    repo = repository()
    if manifest.encrypted:  # its listing was written during its transfer
        verification = repo.verify(manifest)
    else:
        # Before the manifest says completed: a completed backup always has its listing.
        with listing_file(repo.listing_path(manifest)) as listing:
            verification = repo.verify(manifest, each=listing.add)
    done = manifest.model_copy(
        update={
            "file_count": verification.file_count,
            "finished_at": utcnow(),
            "status": BackupStatus.COMPLETED,
            "error": None,
        }
    )
    repo.save(done)
    return done


def fail_backup_record(manifest: Manifest, error: str) -> None:
    """Mark the backup failed; an archive (or listing) from this attempt never stays behind."""
    repo = repository()
    repo.remove_partials(manifest)
    repo.archive_path(manifest).unlink(missing_ok=True)
    repo.listing_path(manifest).unlink(missing_ok=True)
    repo.save(
        manifest.model_copy(
            update={"status": BackupStatus.FAILED, "finished_at": utcnow(), "error": error}
        )
    )
