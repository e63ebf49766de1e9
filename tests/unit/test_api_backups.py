"""/api/backups without a Prefect server: these routes read the repository, not the gateway,
so the app is called without its lifespan. Who sees which backup, what a manifest shows a user,
and the listing's answers (paths, paging, an encrypted backup made before listings)."""

from __future__ import annotations

import asyncio
import io
import tarfile
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import httpx
import pytest
import yaml

from api_shim.app import app
from tasks.archive_listing import listing_file
from tasks.atomic import atomic_file
from tasks.core.callers import mint_token
from tasks.core.settings import get_settings
from tasks.repository import BackupRepository, BackupStatus, Manifest, utcnow

SECRET = "s" * 40
MINE = UUID("0d4c2b1a-6f7e-4d3c-9b2a-1c0d9e8f7a61")
THEIRS = UUID("9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d")


@pytest.fixture
def repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[BackupRepository]:
    servers = [
        {
            "id": str(server_id),
            "name": name,
            "host": "10.0.0.1",
            "username": "root",
            "private_key_file": "/k",
            "owners": owners,
        }
        for server_id, name, owners in ((MINE, "mine", ["alice"]), (THEIRS, "theirs", ["bob"]))
    ]
    (tmp_path / "inventory.yaml").write_text(yaml.safe_dump({"servers": servers}))
    monkeypatch.setenv("MM_INVENTORY", str(tmp_path / "inventory.yaml"))
    monkeypatch.setenv("MM_BACKUP_ROOT", str(tmp_path / "backups"))
    monkeypatch.setenv("MM_JWT_SECRET", SECRET)
    get_settings.cache_clear()
    yield BackupRepository(tmp_path / "backups")
    get_settings.cache_clear()


def call(url: str, user: str = "alice", role: str = "user", **params: Any) -> httpx.Response:
    """GET `url` as `user`, through the app's middleware and error handlers (no lifespan)."""
    token = mint_token(SECRET, user, role, ttl=timedelta(minutes=5))

    async def get() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://shim") as client:
            return await client.get(
                url, headers={"Authorization": f"Bearer {token}"}, params=params
            )

    return asyncio.run(get())


def backup(repo: BackupRepository, server_id: UUID, minutes_ago: int, **fields: Any) -> Manifest:
    """A completed backup of two files, with its listing unless `listed=False`."""
    listed = fields.pop("listed", True)
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as archive:
        for name in ("srv/app/a.txt", "srv/app/b.txt", "srv/other.txt"):
            info = tarfile.TarInfo(name)
            info.size = 3
            archive.addfile(info, io.BytesIO(b"abc"))
    backup_id = uuid4()
    manifest = Manifest(
        backup_id=backup_id,
        server_id=server_id,
        server_name="x",
        job_type="backup:manual",
        paths=["/srv"],
        archive=BackupRepository.archive_name(backup_id, "none"),
        started_at=utcnow() - timedelta(minutes=minutes_ago),
        status=BackupStatus.COMPLETED,
        **fields,
    )
    with atomic_file(repo.archive_path(manifest)) as written:
        written.write(out.getvalue())
    manifest = manifest.model_copy(update={"size": written.size, "sha256": written.sha256})
    repo.save(manifest)
    if listed:
        with listing_file(repo.listing_path(manifest)) as listing:
            repo.verify(manifest, each=listing.add)
    return manifest


def test_a_user_lists_the_backups_of_their_servers_newest_first(repo: BackupRepository) -> None:
    older, newer = backup(repo, MINE, 20), backup(repo, MINE, 10)
    other = backup(repo, THEIRS, 5)

    answer = call("/api/backups")
    assert answer.status_code == 200, answer.text
    data = answer.json()["data"]
    assert [b["backupId"] for b in data["backups"]] == [str(newer.backup_id), str(older.backup_id)]
    assert (data["count"], data["total"]) == (2, 2)
    assert call("/api/backups", serverId=str(MINE), limit=1, offset=1).json()["data"]["backups"][0][
        "backupId"
    ] == str(older.backup_id)

    refused = call("/api/backups", serverId=str(THEIRS))
    assert refused.status_code == 404 and refused.json()["success"] is False
    everything = call("/api/backups", user="root", role="admin").json()["data"]
    assert {b["backupId"] for b in everything["backups"]} == {
        str(m.backup_id) for m in (older, newer, other)
    }


def test_a_manifest_is_shown_to_owners_and_admins_only_and_its_error_to_admins(
    repo: BackupRepository,
) -> None:
    failed = backup(repo, MINE, 1, error="web-1: pre `curl -H 'token: tok-123'` exited 3")
    other = backup(repo, THEIRS, 1)

    mine = call(f"/api/backups/{failed.backup_id}")
    assert mine.status_code == 200, mine.text
    assert mine.json()["data"]["backupId"] == str(failed.backup_id)
    assert mine.json()["data"]["fileCount"] is None and mine.json()["data"]["error"] is None
    assert "tok-123" not in mine.text
    admin = call(f"/api/backups/{failed.backup_id}", user="root", role="admin")
    assert "tok-123" in admin.json()["data"]["error"]

    theirs = call(f"/api/backups/{other.backup_id}")
    unknown = call(f"/api/backups/{uuid4()}")
    assert theirs.status_code == unknown.status_code == 404
    assert theirs.json()["message"] == f"no backup {other.backup_id}"
    assert call(f"/api/backups/{other.backup_id}/files").status_code == 404


def test_files_at_or_under_a_path_with_or_without_its_slash(repo: BackupRepository) -> None:
    manifest = backup(repo, MINE, 1)
    url = f"/api/backups/{manifest.backup_id}/files"

    every = call(url).json()["data"]
    assert [f["path"] for f in every["files"]] == [
        "srv/app/a.txt",
        "srv/app/b.txt",
        "srv/other.txt",
    ]
    assert set(every["files"][0]) >= {"path", "type", "size", "mtime", "mode"}
    under = call(url, path="/srv/app/", limit=1, offset=1).json()["data"]
    assert [f["path"] for f in under["files"]] == ["srv/app/b.txt"]
    assert (under["count"], under["total"], under["path"]) == (1, 2, "/srv/app/")

    missing = call(url, path="/srv/nope")
    assert missing.status_code == 404
    assert (
        missing.json()["message"]
        == f"backup {manifest.backup_id}: '/srv/nope' is not in its archive"
    )
    assert call(url, path="srv/../etc").status_code == 400


def test_files_of_a_backup_made_before_listings_and_of_an_encrypted_one(
    repo: BackupRepository,
) -> None:
    old = backup(repo, MINE, 1, listed=False)
    derived = call(f"/api/backups/{old.backup_id}/files", path="srv/other.txt")
    assert derived.status_code == 200, derived.text
    assert [f["path"] for f in derived.json()["data"]["files"]] == ["srv/other.txt"]

    encrypted = old.model_copy(
        update={
            "backup_id": uuid4(),
            "recipients": ["age1qqqq"],
        }
    )
    encrypted = encrypted.model_copy(
        update={
            "archive": BackupRepository.archive_name(encrypted.backup_id, "none", encrypted=True)
        }
    )
    repo.save(encrypted)
    refused = call(f"/api/backups/{encrypted.backup_id}/files")
    assert refused.status_code == 409
    assert "needs its age identity" in refused.json()["message"]

    failed = backup(repo, MINE, 1, listed=False)
    repo.archive_path(failed).unlink()
    gone = call(f"/api/backups/{failed.backup_id}/files")
    assert gone.status_code == 409
    assert (
        gone.json()["message"] == f"backup {failed.backup_id} (completed): its files cannot be read"
    )
    assert (
        str(repo.root)
        in call(f"/api/backups/{failed.backup_id}/files", user="root", role="admin").json()[
            "message"
        ]
    )
