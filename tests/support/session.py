"""The test session's services, shared by the acceptance and integration tiers: the whole
stack, an sshd, and the inventory. tests/conftest.py makes them fixtures of every tier, so a run
of both tiers starts one stack (each stack start is ~30 s of both cores).

Each service starts once per session; each test gets clean state by adding servers with fresh
ids (`inventory.add_server(target)`). A service that cannot start fails the tests that need it;
nothing here skips.

    def test_backup(stack, target, inventory, run_job, wait_for_final_state):
        server_id = inventory.add_server(target, backup={"paths": [str(tree)]})
        run_id = run_job("backup/backup", {"server_id": str(server_id)})
        run = wait_for_final_state(run_id, timeout=120)
        assert run.state.is_completed()
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
import yaml

from deployments.control.queues import QUEUES_BY_NAME
from deployments.system.local_target import LocalTarget, free_port
from deployments.system.stack import Stack
from tasks.atomic import write_atomic
from tasks.core.settings import BackendSettings
from tests.support.age import Identity, make_identity
from tests.support.failover import Failover
from tests.support.scaled import auth_string, scaled_backend

#: A server that is in the inventory when the stack starts, with a backup schedule far enough
#: ahead (1 January, 03:00) that the scheduler's runs never reach a worker during a session.
SCHEDULED_SERVER_ID = UUID("5c4e4d6a-0000-4000-8000-00000000000a")
SCHEDULED_CRON = "0 3 1 1 *"
SCHEDULED_TIMEZONE = "Europe/Berlin"

#: The maintenance schedule of the session's stack (MM_MAINTENANCE_CRON): 1 January, 04:00, so
#: no scheduled maintenance run prunes other tests' archives or runs in a pool they measure.
MAINTENANCE_CRON = "0 4 1 1 *"
#: The archive check's (MM_CHECK_CRON), for the same reasons: 1 January, 05:00.
CHECK_CRON = "0 5 1 1 *"

#: Lock duration of every queue in the session's stack, seconds: the shortest that heartbeats
#: every 30 s (Prefect's minimum) allow, see `deployments.control.automations`.
LOCK = 45


class InventoryFile:
    """The session's inventory YAML; flow runs read it at run time, so edits need no restart."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._servers: list[dict[str, Any]] = []
        self._write()

    def servers(self) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(s) for s in self._servers]

    def add(self, entry: dict[str, Any]) -> UUID:
        """Add a raw inventory entry (it must have an unused `id`)."""
        with self._lock:
            if any(s["id"] == str(entry["id"]) for s in self._servers):
                raise ValueError(f"server {entry['id']} is already in the inventory")
            self._servers.append({**entry, "id": str(entry["id"])})
            self._write()
        return UUID(str(entry["id"]))

    def add_server(
        self, target: LocalTarget | None = None, *, server_id: UUID | None = None, **fields: Any
    ) -> UUID:
        """Add a server with a fresh id, reached through `target` unless `fields` say otherwise."""
        server_id = server_id or uuid.uuid4()
        name = fields.pop("name", f"test-{str(server_id)[:8]}")
        if target is not None:
            entry = target.server_entry(str(server_id), name, **fields)
        else:
            entry = {"id": str(server_id), "name": name, **fields}
        return self.add(entry)

    def set_owners(self, server_id: UUID | str, owners: list[str]) -> None:
        """Change who owns a server, as an operator editing the file would."""
        with self._lock:
            self._servers = [
                {**s, "owners": owners} if s["id"] == str(server_id) else s for s in self._servers
            ]
            self._write()

    def remove(self, server_id: UUID | str) -> None:
        with self._lock:
            self._servers = [s for s in self._servers if s["id"] != str(server_id)]
            self._write()

    def _write(self) -> None:
        # Whole or not at all: a flow run may read the file at any moment.
        text = yaml.safe_dump({"servers": self._servers}, sort_keys=False)
        write_atomic(self.path, text.encode())


@pytest.fixture(scope="session")
def inventory(tmp_path_factory: pytest.TempPathFactory) -> InventoryFile:
    """The inventory of the session's stack, with one scheduled server to start with."""
    inventory = InventoryFile(tmp_path_factory.mktemp("inventory") / "inventory.yaml")
    inventory.add(
        {
            "id": str(SCHEDULED_SERVER_ID),
            "name": "scheduled",
            "host": "127.0.0.1",
            "username": "nobody",
            "private_key_file": "/nonexistent/id_ed25519",
            "backup": {
                "paths": ["/srv"],
                "schedule": SCHEDULED_CRON,
                "timezone": SCHEDULED_TIMEZONE,
            },
        }
    )
    return inventory


@pytest.fixture(scope="session")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalTarget]:
    """An OpenSSH server on loopback; without /usr/sbin/sshd this fails (run `make test`)."""
    local = LocalTarget(home=tmp_path_factory.mktemp("target")).start()
    yield local
    local.stop()


@pytest.fixture(scope="session")
def age_identity(tmp_path_factory: pytest.TempPathFactory) -> Identity:
    """The session's age key pair: tests encrypt backups to its public key. The stack starts
    with MM_BACKUP_IDENTITY naming its private key, which the stack must pass to no child
    (tests/integration/test_encrypted_backup.py checks the workers' environments)."""
    return make_identity(tmp_path_factory.mktemp("age") / "identity.txt")


@contextlib.contextmanager
def _identity_set(identity: Identity) -> Iterator[None]:
    """MM_BACKUP_IDENTITY in this process's environment while the stack starts only: the
    tests' own settings never see it."""
    os.environ["MM_BACKUP_IDENTITY"] = str(identity.path)
    try:
        yield
    finally:
        del os.environ["MM_BACKUP_IDENTITY"]


@pytest.fixture(scope="session")
def failover(request: pytest.FixtureRequest) -> Iterator[Failover | None]:
    """In scaled mode, the one address in front of the two Prefect API processes."""
    if request.config.getoption("--stack-mode") != "scaled":
        yield None
        return
    front = Failover([free_port(), free_port()]).start()
    try:
        yield front
    finally:
        front.close()


@pytest.fixture(scope="session")
def stack(
    tmp_path_factory: pytest.TempPathFactory,
    inventory: InventoryFile,
    failover: Failover | None,
    age_identity: Identity,
) -> Iterator[Stack]:
    """Server, bootstrap and workers, on free ports; the mode comes from `--stack-mode`.

    embedded: one server on its own SQLite database, one worker per pool.
    scaled: a fresh PostgreSQL database and Redis DB 11, two API processes behind a TCP
    failover on `stack.port`, the services in a third process, and two worker hosts (two
    workers per pool, each host with its own HOME), sharing one backup repository.

    While it lives, Prefect helpers that use the global client (`run_deployment`, `get_client`)
    talk to it; `stack.client()` and `stack.sync_client()` always do.
    """
    data_dir = tmp_path_factory.mktemp("stack")
    common: dict[str, Any] = {
        "inventory": inventory.path,
        "backup_root": data_dir / "backups",
        "results_root": data_dir / "results",
        "api_port": free_port(),
        "ui": False,
        # Stalled runs are crashed after this many seconds instead of minutes (test_crashes.py).
        "extra_env": {
            "MM_LOCK_DURATIONS": json.dumps(dict.fromkeys(QUEUES_BY_NAME, LOCK)),
            "MM_MAINTENANCE_CRON": MAINTENANCE_CRON,
            "MM_CHECK_CRON": CHECK_CRON,
        },
    }
    if failover is None:
        embedded = BackendSettings(database_url=None, redis_url=None)
        running = Stack(data_dir, port=free_port(), backend=embedded, **common)
        with _identity_set(age_identity):
            running.start()
        try:
            with running.prefect_settings():
                yield running
        finally:
            running.stop()
        return
    with scaled_backend() as backend:
        running = Stack(
            data_dir,
            port=failover.port,
            backend=backend,
            server_ports=failover.upstream_ports,
            hosts=2,
            auth_string=auth_string(),
            **common,
        )
        try:
            with _identity_set(age_identity):
                running.start(timeout=180)
            with running.prefect_settings():
                yield running
        finally:
            running.stop()
