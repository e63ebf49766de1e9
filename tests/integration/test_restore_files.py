"""A backup's files, browsed and restored one by one (issue 18): a real sshd, the backup pool,
the operator's CLI on this host, and the shim's /api/backups under the ownership rules."""

from __future__ import annotations

import hashlib
import os
import uuid
from pathlib import Path

import pytest
from typer.testing import CliRunner

from deployments.cli import main as cli
from deployments.system.stack import Stack
from tasks.core.settings import get_settings
from tests.support.api import Api, error, ok
from tests.support.trees import make_tree, restored


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_one_file_under_a_hostile_directory_name_is_restored_alone_and_listed_for_its_owner(
    stack: Stack,
    target,
    inventory,
    run_job,
    wait_for_final_state,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
):
    """Breaks: nothing; a directory named with spaces, quotes and `$(...)` in a backed-up tree.
    Must hold: `restore --path` of one file under it writes that file alone, byte for byte, and
    nothing runs the name; `ls` and `GET /api/backups/:id/files` list it (200) for the server's
    owner, and a user who does not own the server gets 404, as for a backup that is not there."""
    witness = Path(f"/tmp/pwned-{uuid.uuid4().hex[:8]}")
    source = make_tree(tmp_path / "source", big_bytes=20_000)
    # The slash of the witness's path makes it three directories: a shell that saw the whole
    # path unquoted would still run `touch /tmp/pwned-...`.
    hostile = source / f'it\'s a "dir" $(touch {witness})'
    hostile.mkdir(parents=True)
    wanted = hostile / "wanted file.bin"
    wanted.write_bytes(os.urandom(50_000))
    (hostile / "sibling.txt").write_text("stays in the archive\n")
    owner = f"owner-{uuid.uuid4().hex[:6]}"
    server_id = inventory.add_server(target, owners=[owner], backup={"paths": [str(source)]})
    backup_id = uuid.uuid4()

    run = wait_for_final_state(
        run_job(
            "backup/backup",
            {
                "server_id": str(server_id),
                "backup_id": str(backup_id),
                "options": {"compression": "zstd"},
            },
        )
    )
    assert run.state.is_completed(), run.state.message

    # The operator's CLI, on the host whose repository it is.
    monkeypatch.setenv("MM_BACKUP_ROOT", str(stack.backup_root))
    get_settings.cache_clear()
    runner = CliRunner()
    dest = tmp_path / "restore"
    done = runner.invoke(cli.app, ["restore", str(backup_id), str(dest), "--path", str(wanted)])
    assert done.exit_code == 0, done.output
    assert done.stdout.strip() == f"backup {backup_id}: restored 1 member into {dest}"
    copy = restored(dest, wanted)
    assert sha256(copy) == sha256(wanted)
    assert [p for p in dest.rglob("*") if not p.is_dir()] == [copy]  # nothing else
    assert not witness.exists()

    listed = runner.invoke(cli.app, ["ls", str(backup_id), str(hostile)])
    assert listed.exit_code == 0, listed.output
    assert "wanted file.bin" in listed.stdout and "sibling.txt" in listed.stdout
    assert "a.txt" not in listed.stdout  # outside the path asked for

    # The API, as the server's owner and as another user.
    assert stack.shim_url and stack.jwt_secret
    inside = str(hostile.relative_to("/"))
    with Api(stack.shim_url, stack.jwt_secret, owner) as api:
        files = ok(api.get(f"/api/backups/{backup_id}/files", params={"path": str(hostile)}))
        assert {(f["path"], f["type"]) for f in files["files"]} == {
            (inside, "dir"),
            (f"{inside}/wanted file.bin", "file"),
            (f"{inside}/sibling.txt", "file"),
        }
        [one] = [f for f in files["files"] if f["path"].endswith("wanted file.bin")]
        assert one["size"] == 50_000
        manifest = ok(api.get(f"/api/backups/{backup_id}"))
        assert (manifest["status"], manifest["fileCount"]) == ("completed", 7)
        backups = ok(api.get("/api/backups", params={"serverId": str(server_id)}))
        assert [b["backupId"] for b in backups["backups"]] == [str(backup_id)]
        error(api.get(f"/api/backups/{backup_id}/files", params={"path": "/srv/nope"}), 404)
    with Api(stack.shim_url, stack.jwt_secret, f"stranger-{uuid.uuid4().hex[:6]}") as stranger:
        # Word for word what an unknown id gets: nothing tells that the backup exists.
        assert error(stranger.get(f"/api/backups/{backup_id}/files"), 404) == (
            f"no backup {backup_id}"
        )
        unknown = uuid.uuid4()
        assert error(stranger.get(f"/api/backups/{unknown}/files"), 404) == f"no backup {unknown}"
        error(stranger.get(f"/api/backups/{backup_id}"), 404)
        error(stranger.get("/api/backups", params={"serverId": str(server_id)}), 404)
        assert ok(stranger.get("/api/backups"))["total"] == 0
    assert not witness.exists()
