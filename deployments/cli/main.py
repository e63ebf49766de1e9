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
    list_jobs,
    set_paused,
    watch,
)
from deployments.cli.render import (
    JobProgress,
    backups_table,
    check_summary,
    clean_summary,
    job_record,
    jobs_table,
    members_table,
    server_record,
    servers_table,
    show,
    to_json,
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
JsonOption = Annotated[
    bool, typer.Option("--json", help="Print JSON (one document, or one per line) for scripts.")
]
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
    as_json: bool = False,
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
    ids = {_camel(id_name): parameters[id_name]}
    _announce(
        job,
        job_type.value,
        f", {_camel(id_name)} {parameters[id_name]}{later}",
        as_json and not wait,
        ids,
    )
    if wait:
        _watch(job.job_id, as_json)


def _announce(
    job: Enqueued,
    what: str,
    ids: str = "",
    as_json: bool = False,
    more: dict[str, Any] | None = None,
) -> None:
    """The job id on stdout, for scripts (or, `as_json`, the job as created); what was queued
    where on stderr, for people."""
    if as_json:
        record = {"jobId": job.job_id, "queue": job.queue, "due": job.due, **(more or {})}
        out.print(to_json(record), markup=False, soft_wrap=True)
    else:
        out.print(str(job.job_id), markup=False)
    err.print(
        f"{what} queued on {job.queue}: jobId {job.job_id}{ids}", markup=False, soft_wrap=True
    )


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)


def _watch(job_id: UUID, as_json: bool = False) -> None:
    """Follow the job (its progress on stderr) until it ends; exit 1 unless it completed.
    `as_json`: the job as it ended, on stdout."""
    try:
        with JobProgress(str(job_id), err) as bar:
            last: JobSnapshot = asyncio.run(watch(job_id, bar.update))
    except KeyboardInterrupt:
        err.print(f"stopped watching; job {job_id} goes on", markup=False, soft_wrap=True)
        raise typer.Exit(Exit.INTERRUPTED) from None
    reason = f": {last.message}" if last.message else ""
    if as_json:
        out.print(to_json(job_record(last)), markup=False, soft_wrap=True)
    if last.state is JobState.COMPLETED:
        if not as_json:
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
    as_json: JsonOption = False,
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
        as_json,
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
    as_json: JsonOption = False,
) -> None:
    """Scan a server (scan:full, or scan:quick with --quick), now or later."""
    job_type = JobType.SCAN_QUICK if quick else JobType.SCAN_FULL
    _start(job_type, server_id, "scan_id", priority, wait, (in_, at), as_json)


@app.command()
@reported
def update(
    server_id: Annotated[str, typer.Argument(help="Server id from the inventory.")],
    priority: PriorityOption = None,
    in_: InOption = None,
    at: AtOption = None,
    wait: WaitOption = False,
    as_json: JsonOption = False,
) -> None:
    """Run a server's update command (an update:server job), now or later."""
    _start(JobType.UPDATE_SERVER, server_id, "update_id", priority, wait, (in_, at), as_json)


@app.command("watch")
@reported
def watch_command(
    job_id: Annotated[str, typer.Argument(help="Job id (the flow-run id).")],
    as_json: JsonOption = False,
) -> None:
    """Follow a job until it ends; exit 0 if it completed, 1 otherwise."""
    _watch(_uuid("job", job_id), as_json)


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
    as_json: JsonOption = False,
) -> None:
    """Print a job's log (Prefect's flow-run logs), oldest first: time, level, message
    (`--json`: one object per line)."""

    def show_line(line: LogLine) -> None:
        if as_json:
            record = {
                "timestamp": line.timestamp,
                "level": line.level_name,
                "message": line.message,
                "taskRunId": line.task_run_id,
            }
            out.print(to_json(record), markup=False, soft_wrap=True)
            return
        stamp = line.timestamp.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        out.print(f"{stamp} {line.level_name:<8} {line.message}", markup=False, soft_wrap=True)

    try:
        asyncio.run(
            follow_logs(_uuid("job", job_id), show_line, level=log_level(level), follow=follow)
        )
    except KeyboardInterrupt:
        raise typer.Exit(Exit.INTERRUPTED) from None


@app.command("jobs")
@reported
def jobs_command(
    queue: Annotated[
        str | None, typer.Option(help="Only this queue: backup, scan or update.")
    ] = None,
    state: Annotated[
        JobState | None, typer.Option(help="Only jobs in this state.", show_default=False)
    ] = None,
    server_id: Annotated[
        str | None, typer.Option("--server", metavar="SERVER_ID", help="Only this server's jobs.")
    ] = None,
    limit: Annotated[int, typer.Option(min=1, max=200, help="At most this many.")] = 50,
    as_json: JsonOption = False,
) -> None:
    """List jobs, newest first, chosen as `GET /api/jobs` chooses them (every user's)."""
    server = _uuid("server", server_id) if server_id is not None else None
    found, total = asyncio.run(list_jobs(queue, state, server, limit))
    if as_json:
        record = {"jobs": [job_record(j) for j in found], "count": len(found), "total": total}
        out.print(to_json(record), markup=False, soft_wrap=True)
        return
    show(out, jobs_table(found, total))


QueueArgument = Annotated[
    str | None,
    typer.Argument(
        help="Queue (backup, scan or update); all of them when left out.", show_default=False
    ),
]


@app.command()
@reported
def pause(queue: QueueArgument = None, as_json: JsonOption = False) -> None:
    """Hold new jobs of a queue (or all): they wait as `paused`; running jobs go on."""
    pools = asyncio.run(set_paused(queue, True))
    text = to_json({"paused": pools}) if as_json else f"paused {', '.join(pools)}"
    out.print(text, markup=False)


@app.command()
@reported
def resume(queue: QueueArgument = None, as_json: JsonOption = False) -> None:
    """Let the held jobs of a queue (or all) start again, highest priority first."""
    pools = asyncio.run(set_paused(queue, False))
    text = to_json({"resumed": pools}) if as_json else f"resumed {', '.join(pools)}"
    out.print(text, markup=False)


@app.command()
@reported
def clean(
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Only count what would be deleted.")
    ] = False,
    wait: WaitOption = False,
    as_json: JsonOption = False,
) -> None:
    """Apply the retention policies now: old job records and old backup archives.

    Enqueues a run of the maintenance flow (LOW priority, scan pool), the one the daily schedule
    starts; with --wait, follows it and prints what it deleted.
    """
    job = asyncio.run(enqueue_maintenance({"dry_run": dry_run, "user_id": _operator()}))
    _announce(job, f"maintenance{' (dry run)' if dry_run else ''}", as_json=as_json and not wait)
    if wait:
        _watch_report(job.job_id, clean_summary, as_json)


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
    as_json: JsonOption = False,
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
    _announce(job, JobType.CHECK_ARCHIVES.value, as_json=as_json and not wait)
    if wait:
        _watch_report(job.job_id, check_summary, as_json)


def _watch_report(
    job_id: UUID, summary: Callable[[dict[str, Any]], str], as_json: bool = False
) -> None:
    """Follow a job whose result is a report, then print the report: also when the job failed
    (a check's corrupt archives matter most then), not when the watch was interrupted.
    `as_json`: the job as it ended, its report as its `result`."""
    try:
        _watch(job_id, as_json)
    except typer.Exit as stopped:
        if stopped.exit_code == Exit.FAILED and not as_json:
            _show_result(job_id, summary)
        raise
    if not as_json:
        _show_result(job_id, summary)


def _show_result(job_id: UUID, summary: Callable[[dict[str, Any]], str]) -> None:
    result = asyncio.run(job_result(job_id))
    if result is not None:
        out.print(summary(result), markup=False, soft_wrap=True)


@app.command()
@reported
def backups(
    server_id: Annotated[str, typer.Argument(help="Server id.")],
    as_json: JsonOption = False,
) -> None:
    """List the backups of a server in the repository (`--json`: their manifests)."""
    wanted = _uuid("server", server_id)
    manifests = backups_of([wanted])
    if as_json:
        out.print(to_json(manifests), markup=False, soft_wrap=True)
    if not manifests:
        err.print(
            f"no backups of server {wanted} in " + ", ".join(str(r.root) for r in repositories()),
            markup=False,
            soft_wrap=True,
        )
        return
    if not as_json:
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
    as_json: JsonOption = False,
) -> None:
    """List the files of a backup (type, size, time, path), from its listing."""
    repository, manifest = find_backup(backup_id)
    listed = select(members(repository, manifest), [path] if path else [])
    if as_json:
        out.print(to_json(list(listed)), markup=False, soft_wrap=True)
        return
    show(out, members_table(str(manifest.backup_id), listed))


@app.command()
@reported
def verify(
    backup_id: Annotated[str, typer.Argument(help="Backup id.")],
    identity: IdentityOption = None,
    as_json: JsonOption = False,
) -> None:
    """Check a backup's archive against its manifest (size, sha256, readable by tar).

    An encrypted backup: its stored bytes; with an identity, it is decrypted and its plaintext
    checked too (sha256, and the members its backup listed).
    """
    repository, manifest = find_backup(backup_id)
    result = repository.verify(manifest, _identity(identity) if manifest.encrypted else None)
    if as_json:
        record = {
            "backupId": result.backup_id,
            "ok": True,
            "fileCount": result.file_count,
            "size": result.size,
            "sha256": result.sha256,
            "encrypted": manifest.encrypted,
            "decrypted": result.decrypted,
        }
        out.print(to_json(record), markup=False, soft_wrap=True)
        return
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
    as_json: JsonOption = False,
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
    if as_json:
        record = {
            "backupId": manifest.backup_id,
            "destination": done.destination,
            "restored": [str(p) for p in done.written],
        }
        out.print(to_json(record), markup=False, soft_wrap=True)
        return
    out.print(
        f"backup {manifest.backup_id}: restored {plural(len(done.written), 'member')} into "
        f"{done.destination}",
        markup=False,
        soft_wrap=True,
    )


@app.command()
@reported
def servers(as_json: JsonOption = False) -> None:
    """List the servers of the inventory."""
    inventory = load_inventory(get_settings().paths.inventory)
    if as_json:
        records = [server_record(server) for server in inventory.servers]
        out.print(to_json(records), markup=False, soft_wrap=True)
        return
    show(out, servers_table(inventory))


def main() -> None:
    """Entry point of the `medicine-man` script."""
    app()


if __name__ == "__main__":
    main()
