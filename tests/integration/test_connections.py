"""How many SSH connections a backup opens, counted at a real sshd (no Prefect here).

The backup flow's body and its tasks run as functions (tests/support/offline.py) but over the
real transports, through a TCP proxy that counts connections: the plan and the hooks share one
paramiko connection, and the OpenSSH fast path adds its own for the archive (four before the
job connection of tasks/remote.py: plan, pre, transfer, post).
"""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

import flows.backup
from deployments.system.local_target import LocalTarget
from flows.backup import backup
from tasks import openssh, ssh
from tasks.core.jobs import BackupOptions
from tasks.core.settings import get_settings
from tasks.repository import BackupRepository, BackupStatus
from tests.support.offline import Offline, offline
from tests.support.proxy import FaultyProxy
from tests.support.trees import make_tree

__all__ = ["offline"]


@pytest.mark.parametrize(("client", "expected"), [("auto", 2), ("paramiko", 1)])
def test_a_backup_with_hooks_opens_one_connection_plus_the_fast_paths(
    target: LocalTarget,
    offline: Offline,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    client: str,
    expected: int,
) -> None:
    monkeypatch.setenv("MM_SSH_CLIENT", client)
    get_settings.cache_clear()
    monkeypatch.setattr(flows.backup, "job_connection", ssh.job_connection)
    proxy = FaultyProxy(target.port).start()
    try:
        (tmp_path / "known_hosts").write_text(target.known_hosts_line(proxy.port))
        witness = tmp_path / "hooks"
        entry = target.server_entry(
            str(uuid.uuid4()),
            "counted",
            port=proxy.port,
            known_hosts_file=str(tmp_path / "known_hosts"),
            backup={
                "paths": [str(make_tree(tmp_path / "source"))],
                "pre": f"echo pre >> {witness}",
                "post": f"echo post >> {witness}",
            },
        )
        server = offline.add_server(**entry)
        assert openssh.unusable(server) is None  # so "auto" takes the fast path
        backup_id = uuid.uuid4()

        result = backup.fn(
            server_id=server.id, backup_id=backup_id, options=BackupOptions(compression="none")
        )

        assert result["status"] == "completed"
        assert witness.read_text() == "pre\npost\n"
        manifest = BackupRepository(offline.tmp_path / "backups").read(server.id, backup_id)
        assert manifest is not None and manifest.status is BackupStatus.COMPLETED
        assert proxy.connections == expected
    finally:
        proxy.close()
