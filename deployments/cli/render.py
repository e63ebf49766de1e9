"""How the CLI shows things: rich tables of servers, backups and a backup's files, a job's live
progress bar, and what a clean did; and the same as JSON, for scripts (`--json`)."""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import datetime
from types import TracebackType
from typing import Any

from pydantic import BaseModel
from rich.console import Console
from rich.measure import Measurement
from rich.progress import BarColumn, Progress, SpinnerColumn, TaskID, TextColumn
from rich.table import Table
from rich.text import Text

from deployments.control.jobs import JobSnapshot
from tasks.archive_listing import Member
from tasks.core.inventory import Inventory, Server
from tasks.repository import BackupStatus, Manifest

_STATUS_STYLE = {
    BackupStatus.COMPLETED: "green",
    BackupStatus.RUNNING: "yellow",
    BackupStatus.FAILED: "red",
    BackupStatus.CORRUPT: "red",
}


def human_size(size: int | None) -> str:
    """`1536` -> `1.5 KiB`; `None` (not known yet) -> `-`."""
    if size is None:
        return "-"
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{size} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def _when(moment: datetime | None) -> str:
    return "-" if moment is None else moment.strftime("%Y-%m-%d %H:%M:%S %Z").strip()


def show(console: Console, table: Table) -> None:
    """Print a table no narrower than its longest words need, so ids are never cut.

    On a terminal it gets the terminal's width (or more, if the ids need it); into a pipe or
    file it gets its natural width, so that `grep` and `awk` see whole rows.
    """
    measure = Measurement.get(console, console.options.update(max_width=10_000), table)
    natural = console.width if console.is_terminal else measure.maximum
    width = max(natural, measure.minimum)
    if width <= console.width:
        console.print(table, width=width)
        return
    # `Console.print` never goes wider than the console, so a wider one writes the same file.
    wide = Console(file=console.file, width=width, force_terminal=console.is_terminal)
    wide.print(table)


def backups_table(server_id: str, manifests: Iterable[Manifest]) -> Table:
    """One row per backup of a server, oldest first."""
    table = Table(title=f"Backups of server {server_id}")
    for column in ("backupId", "status", "started", "size", "files", "sha256", "jobId"):
        table.add_column(
            column,
            justify="right" if column in ("size", "files") else "left",
            no_wrap=column in ("backupId", "jobId", "sha256"),
        )
    for m in manifests:
        style = _STATUS_STYLE.get(m.status, "")
        table.add_row(
            str(m.backup_id),
            f"[{style}]{m.status.value}[/]" if style else m.status.value,
            _when(m.started_at),
            human_size(m.size),
            "-" if m.file_count is None else str(m.file_count),
            m.sha256[:12] if m.sha256 else "-",
            str(m.job_id) if m.job_id else "-",
        )
    return table


def members_table(backup_id: str, members: Iterable[Member]) -> Table:
    """One row per member of a backup's archive, in archive order; paths as stored (no `/`)."""
    table = Table(title=f"Files of backup {backup_id}")
    for column in ("type", "size", "time", "path"):
        table.add_column(column, justify="right" if column == "size" else "left")
    for m in members:
        path = f"{m.path} -> {m.link}" if m.link else m.path
        table.add_row(  # Text, not markup: a path may hold brackets
            m.type,
            "-" if m.type in ("dir", "symlink", "hardlink") else human_size(m.size),
            _when(m.mtime),
            Text(path),
        )
    return table


def jobs_table(jobs: Iterable[JobSnapshot], total: int) -> Table:
    """One row per job, newest first, as `medicine-man jobs` lists them."""
    listed = list(jobs)
    table = Table(title=f"Jobs: {len(listed)} of {total}")
    for column in ("id", "job", "state", "progress", "server", "created", "reason"):
        table.add_column(column, no_wrap=column in ("id", "server"))
    for job in listed:
        table.add_row(
            str(job.id),
            job.name,
            f"{job.state.value} ({job.state_name})",
            f"{job.percent:.0f} %",
            str(job.parameters.get("server_id") or "-"),
            _when(job.created),
            Text(job.message or "") if job.state.final else Text(job.step or ""),
        )
    return table


def servers_table(inventory: Inventory) -> Table:
    """One row per server of the inventory."""
    table = Table(title="Servers")
    for column in ("id", "name", "host:port", "paths", "schedule"):
        table.add_column(column, no_wrap=column == "id")
    for server in inventory.servers:
        backup = server.backup
        schedule = "-"
        if backup is not None and backup.schedule:
            schedule = backup.schedule
            if backup.timezone != "UTC":
                schedule += f" ({backup.timezone})"
        table.add_row(  # Text, not markup: a name or path may hold brackets
            str(server.id),
            Text(server.name),
            Text(f"{server.host}:{server.port}"),
            Text("\n".join(backup.paths) if backup is not None else "-"),
            Text(schedule),
        )
    return table


class JobProgress:
    """A live progress bar of one job, fed with `JobSnapshot`s; prints each change of state."""

    def __init__(self, job_id: str, console: Console) -> None:
        self._console = console
        self._label = job_id[:8]
        self._last_state: str | None = None
        self._bar = Progress(
            SpinnerColumn(),
            TextColumn("[bold]{task.fields[label]}[/] {task.fields[state]:<9}"),
            BarColumn(),
            TextColumn("{task.percentage:>5.1f} %"),
            TextColumn("{task.description}", markup=False),
            console=console,
        )
        self._task: TaskID | None = None

    def __enter__(self) -> JobProgress:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._task is not None:
            self._bar.stop()

    def update(self, snap: JobSnapshot) -> None:
        state = f"{snap.state.value} ({snap.state_name})"
        if state != self._last_state:
            self._bar.console.print(f"{self._label}: {state}", highlight=False, markup=False)
            self._last_state = state
        if self._task is None:  # drawn on the first answer, so an error shows no empty bar
            self._bar.start()
            self._task = self._bar.add_task("", total=100, label=self._label, state="")
        self._bar.update(
            self._task,
            completed=snap.percent,
            description=snap.step or "",
            state=snap.state.value,
        )


def clean_summary(result: dict[str, Any]) -> str:
    """One line from the maintenance flow's result."""
    verb = "would delete" if result.get("dryRun") else "deleted"
    queues = result.get("jobRecordsByQueue") or {}
    by_queue = ", ".join(f"{queue} {count}" for queue, count in queues.items())
    return (
        f"{verb} {result.get('jobRecordsDeleted', 0)} job records"
        + (f" ({by_queue})" if by_queue else "")
        + f"; {verb} {result.get('archivesRemoved', 0)} backup archives"
        + f" ({human_size(result.get('bytesFreed', 0))});"
        + f" kept {result.get('archivesKept', 0)} archives of {result.get('servers', 0)} servers"
    )


def check_summary(result: dict[str, Any]) -> str:
    """What an archive check found: counts, then each corrupt or unreadable backup."""
    corrupt = result.get("corrupt") or []
    unreadable = result.get("unreadable") or []
    lines = [
        f"re-read {result.get('checked', 0)} of {result.get('archives', 0)} archives"
        f" ({human_size(result.get('bytesRead', 0))}): {result.get('matched', 0)} matched,"
        f" {len(corrupt)} corrupt, {len(unreadable)} unreadable, {result.get('skipped', 0)} skipped"
    ]
    for word, found in (("corrupt", corrupt), ("unreadable", unreadable)):
        lines.extend(
            f"{word}: backup {f.get('backupId')} of server {f.get('serverId')}: {f.get('error')}"
            for f in found
        )
    return "\n".join(lines)


# -- JSON, for scripts (`--json`) ------------------------------------------------------------


def to_json(value: Any) -> str:
    """One line of JSON; times as ISO 8601, ids as strings."""
    return json.dumps(value, default=_plain, separators=(",", ":"))


def _plain(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json", by_alias=True)
    return str(value)  # UUIDs, paths, enums


def job_record(job: JobSnapshot) -> dict[str, Any]:
    """A job as `--json` prints it: the facts the API's job has, by the same names."""
    return {
        "id": job.id,
        "name": job.name,
        "state": job.state.value,
        "stateName": job.state_name,
        "progress": job.percent,
        "step": job.step,
        "attempts": job.attempts,
        "maxAttempts": job.max_attempts,
        "message": job.message,
        "result": job.result,
        "queue": job.pool,
        "parameters": job.parameters,
        "created": job.created,
        "started": job.started,
        "ended": job.ended,
    }


def server_record(server: Server) -> dict[str, Any]:
    """A server of the inventory as `servers --json` prints it (no key files, no commands)."""
    backup = server.backup
    return {
        "id": server.id,
        "name": server.name,
        "host": server.host,
        "port": server.port,
        "username": server.username,
        "paths": backup.paths if backup is not None else [],
        "schedule": backup.schedule if backup is not None else None,
        "timezone": backup.timezone if backup is not None else None,
        "owners": server.owners,
    }
