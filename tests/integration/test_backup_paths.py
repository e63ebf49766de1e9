"""Backup paths that are symbolic links, over the real sshd and a real worker.

Breaks: nothing; the inventory's backup path is a symbolic link to a directory (as `/srv/app ->
/data/app` often is). Must survive: the directory's files, in the archive and in a restore,
under the path as the inventory names it; never a "completed" backup of the link alone.
"""

from __future__ import annotations

import uuid

from tasks.archive_files import restore
from tasks.repository import BackupRepository, BackupStatus
from tests.support.trees import make_tree, restored, tree_digest


def test_a_link_to_a_directory_is_backed_up_as_the_directory(
    stack, target, inventory, run_job, wait_for_final_state, tmp_path
):
    source = make_tree(tmp_path / "data", big_bytes=1000)
    link = tmp_path / "srv" / "app"
    link.parent.mkdir()
    link.symlink_to(source)
    server_id = inventory.add_server(target, backup={"paths": [f"{link}/"]})
    backup_id = uuid.uuid4()

    run = wait_for_final_state(
        run_job("backup/backup", {"server_id": str(server_id), "backup_id": str(backup_id)})
    )

    assert run.state.is_completed(), run.state.message
    repo = BackupRepository(stack.backup_root)
    manifest = repo.read(server_id, backup_id)
    assert manifest is not None and manifest.status is BackupStatus.COMPLETED
    assert manifest.file_count == 5  # make_tree's files, not one link
    destination = tmp_path / "restore"
    restore(repo, manifest, destination)
    restored_dir = restored(destination, link)
    assert restored_dir.is_dir() and not restored_dir.is_symlink()
    assert tree_digest(restored_dir) == tree_digest(source)
    inventory.remove(server_id)
