"""`medicine-man`: the operator's command line.

Jobs (backup, scan, update) are started by deployment name through the Prefect API and
followed with `watch`; backups, their files, verification, restores and the server list read
the local repository and inventory directly. Every expected error is one line on stderr and exit 1.
"""

from __future__ import annotations

import asyncio
import functools
import getpass
import os
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from enum import IntEnum
from pathlib import Path
from typing import Annotated, Any, NoReturn, ParamSpec, TypeVar
from uuid import UUID, uuid4

import typer
from rich.console import Console
from rich.markup import escape

from deployments.cli.jobs import (
    CliError,
    JobNotFound,
    enqueue,
    enqueue_maintenance,
    follow_logs,
    job_result,
    set_paused,
    watch,
)
from deployments.cli.render import (
    JobProgress,
    backups_table,
    check_summary,
    clean_summary,
    members_table,
    servers_table,
    show,
)
from deployments.control.jobs import Enqueued, JobSnapshot, LogLine, log_level
from deployments.control.queues import Priority
from deployments.control.states import JobState
from tasks.archive_files import (
    backups_of,
    find_backup,
    members,
    plural,
    repositories,
    restore,
    select,
)
from tasks.core.due import due_time, parse_duration, parse_run_at
from tasks.core.errors import InvalidOptions, InventoryError, JobError, ServerNotFound
from tasks.core.inventory import load_inventory
from tasks.core.jobs import BackupOptions, JobType
from tasks.core.settings import get_settings
from tasks.repository import Compression

app = typer.Typer(
    name="medicine-man",
    help="Back up, scan and update servers through the Medicine Man job system.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
out = Console(highlight=False)
err = Console(stderr=True, highlight=False)

P = ParamSpec("P")
R = TypeVar("R")


class Exit(IntEnum):
    """The exit statuses a script can rely on (README, "The command line")."""

    DONE = 0
    #: The job failed, or the command's own work did (a restore, a verify).
    FAILED = 1
    #: A bad id, option, time, server or path; typer's own usage errors are 2 as well.
    BAD_INPUT = 2
    #: The system could not be reached or used: Prefect down, not bootstrapped, credentials.
    UNREACHABLE = 3
    #: Ctrl-C while following a job (which goes on).
    INTERRUPTED = 130


#: Our errors that mean the input was wrong, not the system or the job.
_BAD_INPUT = (ValueError, InvalidOptions, ServerNotFound, InventoryError, JobNotFound)


def reported(command: Callable[P, R]) -> Callable[P, R]:
    """Turn our errors into one line on stderr and their `Exit` status, never a traceback."""

    @functools.wraps(command)
    def run(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return command(*args, **kwargs)
        except _BAD_INPUT as exc:  # bad ids and options, validated here or by pydantic
            _fail(str(exc), Exit.BAD_INPUT)
        except CliError as exc:  # the ones that are not bad input: Prefect not usable
            _fail(str(exc), Exit.UNREACHABLE)
        except JobError as exc:
            _fail(str(exc))
        except OSError as exc:
            _fail(f"{exc.filename or ''}: {exc.strerror or exc}".lstrip(": "))

    return run


def _fail(message: str, status: Exit = Exit.FAILED) -> NoReturn:
    err.print(f"[red]error:[/] {escape(message)}", soft_wrap=True)
    raise typer.Exit(status)


def _uuid(kind: str, value: str) -> UUID:
    try:
        return UUID(value)
    except ValueError:
        raise ValueError(f"{value!r} is not a {kind} id (a UUID)") from None


def _operator() -> str:
    """`cli:<os user>`, the user id that jobs started here carry."""
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):  # no passwd entry, e.g. in a container
        return f"cli:uid{os.getuid()}"


PriorityOption = Annotated[
    Priority | None,
    typer.Option(
        "--priority",
        parser=Priority.from_name,
        metavar="<" + "|".join(p.queue_name for p in Priority) + ">",
        help="Work queue to wait in (default: the job type's own).",
        show_default=False,
    ),
]
WaitOption = Annotated[bool, typer.Option("--wait", help="Follow the job until it ends.")]
InOption = Annotated[
    timedelta | None,
    typer.Option(
        "--in",
        parser=parse_duration,
        metavar="DURATION",
        help="Start it after this long, e.g. 90s, 10m, 1h30m (a delayed job until then).",
        show_default=False,
    ),
]
AtOption = Annotated[
    datetime | None,
    typer.Option(
        "--at",
        parser=parse_run_at,
        metavar="TIME",
        help="Start it at this time: ISO 8601 (2026-12-24T03:00Z; no zone: UTC) or epoch ms.",
        show_default=False,
    ),
]


def _start(
    job_type: JobType,
    server_id: str,
    id_name: str,
    priority: Priority | None,
    wait: bool,
    when: tuple[timedelta | None, datetime | None] = (None, None),
    **extra: Any,
) -> None:
    """Enqueue one job (now, or when `when` says: `--in`, `--at`), print its job id, and
    watch it if asked."""
    due = due_time(*when)
    parameters: dict[str, Any] = {
        "server_id": str(_uuid("server", server_id)),
        id_name: str(uuid4()),
        "user_id": _operator(),
        "job_type": job_type.value,
        **extra,
    }
    job: Enqueued = asyncio.run(enqueue(job_type, parameters, priority, due))
    later = f", delayed until {due.isoformat()}" if due else ""
    _announce(job, job_type.value, f", {_camel(id_name)} {parameters[id_name]}{later}")
    if wait:
        _watch(job.job_id)


def _announce(job: Enqueued, what: str, ids: str = "") -> None:
    """The job id on stdout, for scripts; what was queued where on stderr, for people."""
    out.print(str(job.job_id), markup=False)
    err.print(
        f"{what} queued on {job.queue}: jobId {job.job_id}{ids}", markup=False, soft_wrap=True
    )


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)


def _watch(job_id: UUID) -> None:
    try:
        with JobProgress(str(job_id), err) as bar:
            last: JobSnapshot = asyncio.run(watch(job_id, bar.update))
    except KeyboardInterrupt:
        err.print(f"stopped watching; job {job_id} goes on", markup=False, soft_wrap=True)
        raise typer.Exit(Exit.INTERRUPTED) from None
    reason = f": {last.message}" if last.message else ""
    if last.state is JobState.COMPLETED:
        out.print(f"job {job_id} completed{reason}", markup=False)
        return
    _fail(f"job {job_id} {last.state.value} ({last.state_name}){reason}")


@app.command()
@reported
def backup(
    server_id: Annotated[str, typer.Argument(help="Server id from the inventory.")],
    compression: Annotated[
        Compression | None,
        typer.Option(
            help="Archive compression (default: none).",
            show_default=False,
        ),
    ] = None,
    encrypt: Annotated[
        bool,
        typer.Option(
            "--encrypt",
            help="Encrypt the archive (age) to the server's backup.recipients or"
            " MM_BACKUP_RECIPIENTS (a server's backup.encrypt does so anyway).",
        ),
    ] = False,
    priority: PriorityOption = None,
    in_: InOption = None,
    at: AtOption = None,
    wait: WaitOption = False,
) -> None:
    """Back up a server (a backup:manual job), now or later."""
    options = BackupOptions(compression=compression or False, encryption=encrypt)
    _start(
        JobType.BACKUP_MANUAL,
        server_id,
        "backup_id",
        priority,
        wait,
        (in_, at),
        options=options.model_dump(mode="json"),
    )


@app.command()
@reported
def scan(
    server_id: Annotated[str, typer.Argument(help="Server id from the inventory.")],
    quick: Annotated[bool, typer.Option("--quick", help="Only check connectivity.")] = False,
    priority: PriorityOption = None,
    in_: InOption = None,
    at: AtOption = None,
    wait: WaitOption = False,
) -> None:
    """Scan a server (scan:full, or scan:quick with --quick), now or later."""
    job_type = JobType.SCAN_QUICK if quick else JobType.SCAN_FULL
    _start(job_type, server_id, "scan_id", priority, wait, (in_, at))


@app.command()
@reported
def update(
    server_id: Annotated[str, typer.Argument(help="Server id from the inventory.")],
    priority: PriorityOption = None,
    in_: InOption = None,
    at: AtOption = None,
    wait: WaitOption = False,
) -> None:
    """Run a server's update command (an update:server job), now or later."""
    _start(JobType.UPDATE_SERVER, server_id, "update_id", priority, wait, (in_, at))


@app.command("watch")
@reported
def watch_command(
    job_id: Annotated[str, typer.Argument(help="Job id (the flow-run id).")],
) -> None:
    """Follow a job until it ends; exit 0 if it completed, 1 otherwise."""
    _watch(_uuid("job", job_id))


@app.command()
@reported
def logs(
    job_id: Annotated[str, typer.Argument(help="Job id (the flow-run id).")],
    level: Annotated[
        str, typer.Option(help="At least this level: debug, info, warning, error, critical.")
    ] = "debug",
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Go on printing lines until the job ends.")
    ] = False,
) -> None:
    """Print a job's log (Prefect's flow-run logs), oldest first: time, level, message."""

    def show_line(line: LogLine) -> None:
        stamp = line.timestamp.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        out.print(f"{stamp} {line.level_name:<8} {line.message}", markup=False, soft_wrap=True)

    try:
        asyncio.run(
            follow_logs(_uuid("job", job_id), show_line, level=log_level(level), follow=follow)
        )
    except KeyboardInterrupt:
        raise typer.Exit(Exit.INTERRUPTED) from None


QueueArgument = Annotated[
    str | None,
    typer.Argument(
        help="Queue (backup, scan or update); all of them when left out.", show_default=False
    ),
]


@app.command()
@reported
def pause(queue: QueueArgument = None) -> None:
    """Hold new jobs of a queue (or all): they wait as `paused`; running jobs go on."""
    pools = asyncio.run(set_paused(queue, True))
    out.print(f"paused {', '.join(pools)}", markup=False)


@app.command()
@reported
def resume(queue: QueueArgument = None) -> None:
    """Let the held jobs of a queue (or all) start again, highest priority first."""
    pools = asyncio.run(set_paused(queue, False))
    out.print(f"resumed {', '.join(pools)}", markup=False)


@app.command()
@reported
def clean(
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Only count what would be deleted.")
    ] = False,
    wait: WaitOption = False,
) -> None:
    """Apply the retention policies now: old job records and old backup archives.

    Enqueues a run of the maintenance flow (LOW priority, scan pool), the one the daily schedule
    starts; with --wait, follows it and prints what it deleted.
    """
    job = asyncio.run(enqueue_maintenance({"dry_run": dry_run, "user_id": _operator()}))
    _announce(job, f"maintenance{' (dry run)' if dry_run else ''}")
    if wait:
        _watch_report(job.job_id, clean_summary)


@app.command()
@reported
def check(
    every: Annotated[
        bool, typer.Option("--all", help="Re-read every archive, not this run's share.")
    ] = False,
    server_id: Annotated[
        str | None,
        typer.Option("--server", metavar="SERVER_ID", help="Only this server's archives."),
    ] = None,
    wait: WaitOption = False,
) -> None:
    """Re-read stored archives against their manifests now (a check:archives job).

    Enqueues a run of the check flow (LOW priority, scan pool), the one the daily schedule
    starts: it re-reads its share of the archives (MM_CHECK_DAYS), or all with --all, marks each
    that does not match `corrupt` and fails naming them; with --wait, follows it and prints
    what it found.
    """
    parameters: dict[str, Any] = {
        "all_archives": every,
        "user_id": _operator(),
        "job_type": JobType.CHECK_ARCHIVES.value,
    }
    if server_id is not None:
        parameters["server_id"] = str(_uuid("server", server_id))
    job = asyncio.run(enqueue(JobType.CHECK_ARCHIVES, parameters, None))
    _announce(job, JobType.CHECK_ARCHIVES.value)
    if wait:
        _watch_report(job.job_id, check_summary)


def _watch_report(job_id: UUID, summary: Callable[[dict[str, Any]], str]) -> None:
    """Follow a job whose result is a report, then print the report: also when the job failed
    (a check's corrupt archives matter most then), not when the watch was interrupted."""
    try:
        _watch(job_id)
    except typer.Exit as stopped:
        if stopped.exit_code == Exit.FAILED:
            _show_result(job_id, summary)
        raise
    _show_result(job_id, summary)


def _show_result(job_id: UUID, summary: Callable[[dict[str, Any]], str]) -> None:
    result = asyncio.run(job_result(job_id))
    if result is not None:
        out.print(summary(result), markup=False, soft_wrap=True)


@app.command()
@reported
def backups(
    server_id: Annotated[str, typer.Argument(help="Server id.")],
) -> None:
    """List the backups of a server in the repository."""
    wanted = _uuid("server", server_id)
    manifests = backups_of([wanted])
    if not manifests:
        err.print(
            f"no backups of server {wanted} in " + ", ".join(str(r.root) for r in repositories()),
            markup=False,
            soft_wrap=True,
        )
        return
    show(out, backups_table(str(wanted), manifests))


IdentityOption = Annotated[
    Path | None,
    typer.Option(
        "--identity",
        "-i",
        help="age identity file (private key) of an encrypted backup; default: MM_BACKUP_IDENTITY.",
        show_default=False,
    ),
]


def _identity(given: Path | None) -> Path | None:
    return given or get_settings().encryption.identity


@app.command("ls")
@reported
def ls(
    backup_id: Annotated[str, typer.Argument(help="Backup id.")],
    path: Annotated[
        str | None,
        typer.Argument(help="A path in the backup (e.g. /srv/app): only what is at or under it."),
    ] = None,
) -> None:
    """List the files of a backup (type, size, time, path), from its listing."""
    repository, manifest = find_backup(backup_id)
    listed = select(members(repository, manifest), [path] if path else [])
    show(out, members_table(str(manifest.backup_id), listed))


@app.command()
@reported
def verify(
    backup_id: Annotated[str, typer.Argument(help="Backup id.")],
    identity: IdentityOption = None,
) -> None:
    """Check a backup's archive against its manifest (size, sha256, readable by tar).

    An encrypted backup: its stored bytes; with an identity, it is decrypted and its plaintext
    checked too (sha256, and the members its backup listed).
    """
    repository, manifest = find_backup(backup_id)
    result = repository.verify(manifest, _identity(identity) if manifest.encrypted else None)
    checked = ""
    if manifest.encrypted:
        checked = (
            ", decrypted and its plaintext checked"
            if result.decrypted
            else "; encrypted: its stored bytes checked, not decrypted (no --identity)"
        )
    out.print(
        f"backup {result.backup_id} OK: {result.file_count} files, {result.size} bytes, "
        f"sha256 {result.sha256}{checked}",
        markup=False,
        soft_wrap=True,
    )


@app.command("restore")
@reported
def restore_command(
    backup_id: Annotated[str, typer.Argument(help="Backup id.")],
    dest: Annotated[Path, typer.Argument(help="Directory to unpack into.")],
    paths: Annotated[
        list[str] | None,
        typer.Option(
            "--path",
            metavar="PATH",
            help="Restore only this file or directory (repeatable), e.g. /srv/app/config.yaml.",
            show_default=False,
        ),
    ] = None,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Unpack into a non-empty directory.")
    ] = False,
    same_owner: Annotated[
        bool,
        typer.Option("--same-owner", help="Keep the files' owners (root only); else yours."),
    ] = False,
    identity: IdentityOption = None,
) -> None:
    """Verify a backup, then unpack it, or only the --path ones, into DEST (which must be empty
    unless --overwrite). Nothing is written outside DEST, no setuid bit, no device node. An
    encrypted backup with its identity."""
    repository, manifest = find_backup(backup_id)
    done = restore(
        repository,
        manifest,
        dest,
        paths=paths or [],
        overwrite=overwrite,
        same_owner=same_owner,
        identity=_identity(identity) if manifest.encrypted else None,
    )
    out.print(
        f"backup {manifest.backup_id}: restored {plural(len(done.written), 'member')} into "
        f"{done.destination}",
        markup=False,
        soft_wrap=True,
    )


@app.command()
@reported
def servers() -> None:
    """List the servers of the inventory."""
    show(out, servers_table(load_inventory(get_settings().paths.inventory)))


def main() -> None:
    """Entry point of the `medicine-man` script."""
    app()


if __name__ == "__main__":
    main()
