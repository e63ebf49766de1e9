"""Tasks of a backup: plan it on the server, record it, stream the tar, verify and record."""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from uuid import UUID

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from tasks.archive_listing import write_listing
from tasks.core.errors import InvalidOptions, RemoteCommandFailed, RemotePathMissing
from tasks.core.inventory import Server
from tasks.core.jobs import BackupOptions
from tasks.core.settings import get_settings
from tasks.outcome import failure_published
from tasks.progress import Progress
from tasks.remote import Connection, run_once, session_for
from tasks.repository import BackupRepository, BackupStatus, Compression, Manifest, utcnow
from tasks.retry import RETRY_POLICY
from tasks.ssh import open_session

# Paths arrive as positional parameters ("$@"), never spliced into the script text.
_PLAN_SCRIPT = r"""
status=0
for p do
  if [ ! -e "$p" ] && [ ! -L "$p" ]; then printf 'missing\t%s\n' "$p"; status=3; fi
done
[ "$status" = 0 ] || exit 3
for c in zstd gzip; do command -v "$c" >/dev/null 2>&1 && printf 'codec\t%s\n' "$c"; done
find "$@" -type f -printf '%s\n' 2>/dev/null |
  awk '{n++; s+=$1} END {printf "estimate\t%.0f\t%.0f\n", n, s}'
exit 0
"""

#: GNU tar exits 1 when a file changed while it was read: the archive is still whole.
TAR_OK = (0, 1)
TAR_BLOCK = 512


@dataclass(frozen=True)
class BackupPlan:
    """What the server told us before the transfer."""

    compression: Compression
    estimated_bytes: int
    estimated_files: int


def repository() -> BackupRepository:
    return BackupRepository(get_settings().paths.backup_root)


def plan_command(paths: list[str]) -> list[str]:
    """The remote check of the paths: each one a positional parameter of the script."""
    return ["sh", "-c", _PLAN_SCRIPT, "sh", *paths]


def tar_command(paths: list[str], compression: Compression) -> list[str]:
    """The remote tar: members relative to / and every path after `--`, so none is an option."""
    argv = ["tar", "--create", "--file=-", "--directory=/"]
    if compression == "zstd":
        argv.append("--use-compress-program=zstd -T0 -3 -q")
    elif compression == "gzip":
        argv.append("--gzip")
    return [*argv, "--", *[path.lstrip("/") or "." for path in paths]]


def choose_compression(options: BackupOptions, available: set[str], server: Server) -> Compression:
    wanted = options.wanted_compression
    if wanted == "none":
        return "none"
    if wanted == "auto":
        if "zstd" in available:
            return "zstd"
        if "gzip" in available:
            return "gzip"
        return "none"
    if wanted not in available:
        raise InvalidOptions(
            f"{server.name}: compression {wanted!r} asked, but {wanted} is not "
            "installed on the server"
        )
    return wanted


def parse_plan(output: str) -> tuple[list[str], set[str], int, int]:
    """Missing paths, available codecs, file count and byte count from `_PLAN_SCRIPT`."""
    missing: list[str] = []
    codecs: set[str] = set()
    files = size = 0
    for line in output.splitlines():
        kind, _, rest = line.partition("\t")
        if kind == "missing":
            missing.append(rest)
        elif kind == "codec":
            codecs.add(rest)
        elif kind == "estimate":
            count, _, total = rest.partition("\t")
            files, size = int(count), int(total)
    return missing, codecs, files, size


@task(name="verify server", cache_policy=NO_CACHE, **RETRY_POLICY)
def plan_backup(
    server: Server, options: BackupOptions, connection: Connection | None = None
) -> BackupPlan:
    """Connect, check every path exists, pick the codec and estimate the size."""
    if server.backup is None:
        raise InvalidOptions(f"{server.name} has no `backup` section in the inventory")
    paths = server.backup.paths
    with session_for(server, connection, open_session) as ssh:
        result = ssh.run(plan_command(paths), check=False)
    missing, codecs, files, size = parse_plan(result.text)
    if result.exit_status == 3:
        raise RemotePathMissing(
            f"{server.name}: {', '.join(shlex.quote(p) for p in missing)} not found on the server"
        )
    if result.exit_status != 0:
        raise RemoteCommandFailed(
            f"{server.name}: checking the backup paths failed with status {result.exit_status}: "
            f"{result.stderr_tail()}",
            exit_status=result.exit_status,
            stderr_tail=result.stderr_tail(),
        )
    return BackupPlan(
        compression=choose_compression(options, codecs, server),
        # tar adds a header block per member and pads each file to a block.
        estimated_bytes=size + files * 2 * TAR_BLOCK,
        estimated_files=files,
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
        archive=BackupRepository.archive_name(backup_id, plan.compression),
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
    with failure_published(), session_for(server, connection, open_session) as ssh:
        run_once(
            ssh,
            command,
            lambda stream, line: logger.info("%s %s: %s", which, stream, line),
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
    """Stream tar from the server into the repository; size and sha256 computed on the way."""
    repo = repository()
    progress.milestone(40, "transfer started")
    with (
        session_for(server, connection, open_session) as ssh,
        repo.open_archive(manifest) as archive,
    ):
        result = ssh.download(
            tar_command(manifest.paths, manifest.compression),
            archive,
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
    return manifest.model_copy(update={"size": archive.size, "sha256": archive.sha256})


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
    verification = repo.verify(manifest)
    if not manifest.encrypted:  # an encrypted archive's listing is written during its transfer
        # Before the manifest says completed: a completed backup always has its listing.
        write_listing(repo.listing_path(manifest), verification.members)
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
