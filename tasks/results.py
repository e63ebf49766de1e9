"""Scan results and update logs, one JSON record per job under `MM_RESULTS_ROOT`.

Layout: `<root>/scans/<serverId>/<scanId>.json` and `<root>/updates/<serverId>/<updateId>.json`
(with the command's output in `<updateId>.log`). A job run twice rewrites its one record.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal
from uuid import UUID

from pydantic import BaseModel, ConfigDict
from pydantic.alias_generators import to_camel

from tasks.atomic import write_atomic
from tasks.core.settings import get_settings

RecordStatus = Literal["running", "completed", "failed"]


class _Record(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True)

    server_id: UUID
    server_name: str
    job_id: UUID | None = None
    user_id: str | None = None
    job_type: str
    status: RecordStatus = "running"
    started_at: datetime
    finished_at: datetime | None = None
    error: str | None = None


class ScanRecord(_Record):
    """One scan of one server."""

    scan_id: UUID
    results: dict[str, Any] = {}


class UpdateRecord(_Record):
    """One run of a server's update command."""

    update_id: UUID
    command: str
    exit_status: int | None = None
    stderr_tail: str | None = None


def scan_path(server_id: UUID, scan_id: UUID) -> Any:
    return (
        get_settings().paths.results_root / "scans" / str(UUID(str(server_id))) / f"{scan_id}.json"
    )


def update_path(server_id: UUID, update_id: UUID) -> Any:
    root = get_settings().paths.results_root / "updates" / str(UUID(str(server_id)))
    return root / f"{UUID(str(update_id))}.json"


def save_scan(record: ScanRecord) -> None:
    write_atomic(
        scan_path(record.server_id, record.scan_id),
        record.model_dump_json(by_alias=True, indent=2).encode(),
    )


def save_update(record: UpdateRecord, log: str | None = None) -> None:
    path = update_path(record.server_id, record.update_id)
    if log is not None:
        write_atomic(path.with_suffix(".log"), log.encode())
    write_atomic(path, record.model_dump_json(by_alias=True, indent=2).encode())
