"""/api/backups: the backups of the caller's servers, one backup's manifest, and its files.

Read from the backup repositories where the shim runs (MM_BACKUP_ROOT, then MM_BACKUP_ROOTS)
through the functions the CLI uses (tasks/archive_files.py). A backup of a server the caller
may not use answers as an unknown one: 404. The routes are plain functions, not coroutines:
they read files, which FastAPI then does in its thread pool instead of the event loop.
"""

from __future__ import annotations

from typing import Annotated
from uuid import UUID

from fastapi import APIRouter, HTTPException, Query

from api_shim.access import inventory_for, may_see_backup, usable_server, usable_servers
from api_shim.auth import CurrentCaller
from api_shim.routes import errors
from api_shim.routes.jobs import InvalidQuery
from api_shim.schemas import BackupFiles, BackupList, Envelope
from tasks.archive_files import backups_of, find_backup, members, select, server_ids
from tasks.core.callers import Caller
from tasks.core.errors import ArchiveInvalid, IdentityRequired, InvalidOptions, MemberNotFound
from tasks.repository import BackupRepository, Manifest

router = APIRouter(prefix="/api/backups", tags=["backups"])


@router.get("", response_model=Envelope[BackupList], responses=errors(401, 404, 422, 503))
def list_backups(
    caller: CurrentCaller,
    server_id: Annotated[
        UUID | None, Query(alias="serverId", description="Only the backups of this server.")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
) -> Envelope[BackupList]:
    """The backups of the caller's servers, or of one of them, newest first (an admin's: of
    every server, those gone from the inventory too); `total` counts all that match."""
    if server_id is not None:
        if not caller.is_admin:
            usable_server(caller, inventory_for(caller), server_id)  # another's: 404
        servers = [server_id]
    elif caller.is_admin:
        servers = server_ids()
    else:
        servers = [s.id for s in usable_servers(caller, inventory_for(caller))]
    found = backups_of(servers)[::-1]
    page = [_shown(m, caller) for m in found[offset : offset + limit]]
    data = BackupList(backups=page, count=len(page), total=len(found), limit=limit, offset=offset)
    return Envelope(message="Backups retrieved successfully", data=data)


@router.get("/{backup_id}", response_model=Envelope[Manifest], responses=errors(401, 404, 422, 503))
def get_backup(backup_id: UUID, caller: CurrentCaller) -> Envelope[Manifest]:
    """A backup's manifest: status, size, sha256, file count, times, paths."""
    _, manifest = _visible(backup_id, caller)
    return Envelope(message="Backup retrieved successfully", data=_shown(manifest, caller))


@router.get(
    "/{backup_id}/files",
    response_model=Envelope[BackupFiles],
    responses=errors(400, 401, 404, 409, 422, 503),
)
def backup_files(
    backup_id: UUID,
    caller: CurrentCaller,
    path: Annotated[
        str,
        Query(
            max_length=4096,
            description="A path in the archive, with or without its leading `/`: only the "
            "members at or under it. Empty: all.",
        ),
    ] = "",
    limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> Envelope[BackupFiles]:
    """The members of a backup's archive at or under `path`, in archive order, from the listing
    written at backup time: no identity needed, encrypted or not. 404 for a path not in it."""
    repository, manifest = _visible(backup_id, caller)
    try:
        chosen = select(members(repository, manifest), [path] if path else [])
    except MemberNotFound:
        raise HTTPException(404, f"backup {backup_id}: {path!r} is not in its archive") from None
    except IdentityRequired as exc:  # encrypted, and made before listings existed
        raise HTTPException(409, str(exc)) from None
    except InvalidOptions as exc:  # a path with `..`
        raise InvalidQuery("path", str(exc)) from None
    except ArchiveInvalid as exc:
        # An admin learns why; the reason names the repository's paths on this host.
        reason = f": {exc}" if caller.is_admin else ""
        raise HTTPException(
            409, f"backup {backup_id} ({manifest.status.value}): its files cannot be read{reason}"
        ) from None
    page = chosen[offset : offset + limit]
    data = BackupFiles(
        backup_id=str(backup_id),
        path=path,
        files=page,
        count=len(page),
        total=len(chosen),
        limit=limit,
        offset=offset,
    )
    return Envelope(message="Backup files retrieved successfully", data=data)


def _visible(backup_id: UUID, caller: Caller) -> tuple[BackupRepository, Manifest]:
    """The backup, if the caller may see it; else 404, the same as for an unknown id."""
    try:
        repository, manifest = find_backup(backup_id)
    except InvalidOptions:
        raise HTTPException(404, f"no backup {backup_id}") from None
    if not may_see_backup(caller, manifest):
        raise HTTPException(404, f"no backup {backup_id}")
    return repository, manifest


def _shown(manifest: Manifest, caller: Caller) -> Manifest:
    """What the caller may read of a manifest: a failure's `error` may quote a hook's command,
    which only admins see (the job's `failedReason` tells users what failed)."""
    return manifest if caller.is_admin else manifest.model_copy(update={"error": None})
