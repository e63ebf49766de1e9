"""Run a job flow's body and its tasks as plain functions over the fake SSH server.

No Prefect server and no engine: each task of the flow modules is replaced by the function it
wraps (`.fn`, so Prefect's retries do not run: tests ask `tasks.retry` what would be retried),
and the few calls that would reach Prefect's API (progress, artifacts, the run logger) are
recorded here instead. The inventory, the backup repository and the result records are real
files under the test's tmp_path, and the SSH is `tasks.fake_ssh`.
"""

from __future__ import annotations

import contextlib
import logging
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from prefect import Task

import flows.backup
import flows.check
import flows.scan
import flows.update
import tasks.archive_checks
import tasks.backup
import tasks.outcome
import tasks.scan
import tasks.update
from tasks.core.inventory import Server
from tasks.core.settings import get_settings
from tasks.fake_ssh import FakeSSH
from tasks.progress import Progress
from tasks.remote import Connection
from tasks.server_slot import slot_name

FLOW_MODULES = (flows.backup, flows.scan, flows.update, flows.check)


class RecordedProgress(Progress):
    """Every update a job offers, in order, unmerged (tests/unit/test_progress.py tests merging)."""

    def __init__(self) -> None:
        super().__init__()
        #: Every update offered: milestones and the steps between them.
        self.updates: list[tuple[float, str]] = []
        #: The documented milestones only.
        self.milestones: list[tuple[float, str]] = []

    def milestone(self, percent: float, message: str) -> None:
        self.milestones.append((percent, message))
        super().milestone(percent, message)

    def _offer(self, percent: float, message: str) -> None:
        self.percent = percent
        self.updates.append((percent, message))


@dataclass
class Offline:
    """What a flow run offline left behind."""

    fake: FakeSSH
    progress: RecordedProgress
    tmp_path: Path
    #: The job connections the flows made, in order.
    connections: list[Connection] = field(default_factory=list)
    #: Artifacts the tasks would have created (tables, failures).
    artifacts: list[dict[str, Any]] = field(default_factory=list)
    #: The server slots the flows held (tasks/server_slot.py), in order.
    slots: list[str] = field(default_factory=list)
    #: What the flows announced to the notifications (completed backups, corrupt archives).
    announced: list[tuple[str, Any]] = field(default_factory=list)

    def add_server(self, **fields: Any) -> Server:
        """A server in the inventory file (read by the flows' `find_server`)."""
        entry: dict[str, Any] = {
            "id": str(uuid.uuid4()),
            "name": "web1",
            "host": "192.0.2.10",
            "username": "backup",
            "private_key_file": str(self.tmp_path / "id_ed25519"),
            "known_hosts_file": str(self.tmp_path / "known_hosts"),
            **fields,
        }
        path = self.tmp_path / "inventory.yaml"
        servers = yaml.safe_load(path.read_text())["servers"] if path.exists() else []
        path.write_text(yaml.safe_dump({"servers": [*servers, entry]}))
        return Server.model_validate(entry)


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Offline]:
    """A fake server, recorded progress and artifacts; tasks and flows run as functions."""
    monkeypatch.setenv("MM_INVENTORY", str(tmp_path / "inventory.yaml"))
    monkeypatch.setenv("MM_BACKUP_ROOT", str(tmp_path / "backups"))
    monkeypatch.setenv("MM_RESULTS_ROOT", str(tmp_path / "results"))
    get_settings.cache_clear()
    state = Offline(FakeSSH(), RecordedProgress(), tmp_path)

    @contextlib.contextmanager
    def server_slot(server: Server, progress: Progress) -> Iterator[None]:
        # Prefect's concurrency limit needs its server; the slot's name is what we can check.
        state.slots.append(slot_name(server))
        yield

    def job_connection(server: Server) -> Connection:
        connection = Connection(server, state.fake.open)
        state.connections.append(connection)
        return connection

    for module in FLOW_MODULES:
        for name, value in vars(module).items():
            if isinstance(value, Task):
                monkeypatch.setattr(module, name, value.fn)
        for name, fake in (("job_connection", job_connection), ("server_slot", server_slot)):
            if hasattr(module, name):  # the check flow connects to no server
                monkeypatch.setattr(module, name, fake)
        monkeypatch.setattr(module, "publish_result", lambda result: result)
    monkeypatch.setattr(Progress, "start", classmethod(lambda cls: state.progress))

    def table_artifact(**kwargs: Any) -> None:
        state.artifacts.append({"type": "table", **kwargs})

    class FailureArtifact:
        def __init__(self, **kwargs: Any) -> None:
            self.kwargs = kwargs

        def create(self) -> None:
            state.artifacts.append(self.kwargs)

    monkeypatch.setattr(tasks.scan, "create_table_artifact", table_artifact)
    monkeypatch.setattr(tasks.outcome, "Artifact", FailureArtifact)
    logger = logging.getLogger("tests.offline")
    for module in (tasks.backup, tasks.archive_checks, flows.check, flows.backup):
        monkeypatch.setattr(module, "get_run_logger", lambda: logger)
    # The notifications' events need Prefect's server: recorded instead.
    monkeypatch.setattr(
        flows.backup,
        "announce_backup",
        lambda run_id, server: state.announced.append(("backup", server.id)),
    )
    monkeypatch.setattr(
        flows.check,
        "announce_corrupt",
        lambda report, run_id: state.announced.append(("corrupt", report)),
    )
    output = logging.getLogger("tests.offline.command-output")
    for module in (tasks.backup, tasks.update):
        monkeypatch.setattr(module, "command_output_logger", lambda: output)
    yield state
    get_settings.cache_clear()
