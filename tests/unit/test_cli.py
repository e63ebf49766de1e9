"""The operator CLI without a Prefect server: what it sends, what it prints, how it exits."""

from __future__ import annotations

import hashlib
import json
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import pytest
import yaml
from typer.testing import CliRunner

from deployments.cli import jobs as cli_jobs
from deployments.cli import main as cli
from deployments.cli.jobs import DeploymentMissing
from deployments.cli.main import Exit
from deployments.control.jobs import Enqueued, JobSnapshot, LogLine
from deployments.control.queues import Priority
from deployments.control.states import JobState
from tasks.atomic import atomic_file
from tasks.core.jobs import JobType
from tasks.core.settings import get_settings
from tasks.repository import BackupRepository, BackupStatus, Manifest, utcnow

SERVER = "0d4c2b1a-6f7e-4d3c-9b2a-1c0d9e8f7a61"
runner = CliRunner()


@pytest.fixture(autouse=True)
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("MM_INVENTORY", str(tmp_path / "inventory.yaml"))
    monkeypatch.setenv("MM_BACKUP_ROOT", str(tmp_path / "backups"))
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


#: The due time of each job `sent` saw, in order.
dues: list[Any] = []


@pytest.fixture
def sent(monkeypatch: pytest.MonkeyPatch) -> list[tuple[JobType, dict[str, Any], Any]]:
    """What the CLI asked Prefect for, instead of asking it."""
    calls: list[tuple[JobType, dict[str, Any], Any]] = []
    dues.clear()
    job_id = UUID("11111111-2222-4333-8444-555555555555")

    async def enqueue(
        job_type: JobType, parameters: dict[str, Any], priority: Any, due: Any = None
    ) -> Enqueued:
        calls.append((job_type, parameters, priority))
        dues.append(due)
        return Enqueued(job_id=job_id, deployment="x/x", queue="pool/queue", parameters={})

    monkeypatch.setattr(cli, "enqueue", enqueue)
    return calls


def test_backup_sends_the_flow_parameters(sent: list[Any]) -> None:
    result = runner.invoke(cli.app, ["backup", SERVER, "--compression", "zstd"])

    assert result.exit_code == 0, result.output
    assert result.stdout == "11111111-2222-4333-8444-555555555555\n"
    [(job_type, parameters, priority)] = sent
    assert job_type is JobType.BACKUP_MANUAL
    assert priority is None
    assert parameters.pop("user_id").startswith("cli:")
    assert UUID(parameters.pop("backup_id")).version == 4
    assert parameters == {
        "server_id": SERVER,
        "job_type": "backup:manual",
        "options": {"backup_type": "full", "compression": "zstd", "encryption": False},
    }
    assert "backupId" in result.stderr


@pytest.mark.parametrize(
    ("args", "job_type", "id_name"),
    [
        (["scan", SERVER], JobType.SCAN_FULL, "scan_id"),
        (["scan", SERVER, "--quick", "--priority", "high"], JobType.SCAN_QUICK, "scan_id"),
        (["update", SERVER, "--priority", "LOW"], JobType.UPDATE_SERVER, "update_id"),
    ],
)
def test_scan_and_update(sent: list[Any], args: list[str], job_type: JobType, id_name: str) -> None:
    result = runner.invoke(cli.app, args)

    assert result.exit_code == 0, result.output
    [(sent_type, parameters, priority)] = sent
    assert sent_type is job_type
    assert parameters["job_type"] == job_type.value
    assert set(parameters) == {"server_id", id_name, "user_id", "job_type"}
    expected = Priority.from_name(args[-1]) if "--priority" in args else None
    assert priority is expected


@pytest.mark.parametrize(
    "args",
    [["backup", SERVER, "--priority", "urgent"], ["backup", SERVER, "--compression", "lz4"]],
)
def test_bad_choices_are_usage_errors(sent: list[Any], args: list[str]) -> None:
    result = runner.invoke(cli.app, args)
    assert result.exit_code == 2
    assert sent == []


def test_a_bad_server_id_is_one_line(sent: list[Any]) -> None:
    result = runner.invoke(cli.app, ["backup", "../etc"])
    assert result.exit_code == Exit.BAD_INPUT
    assert result.stderr == "error: '../etc' is not a server id (a UUID)\n"
    assert sent == []


def test_a_missing_deployment_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    async def enqueue(*args: Any) -> Enqueued:
        raise DeploymentMissing("deployment scan/scan is not registered; run the bootstrap")

    monkeypatch.setattr(cli, "enqueue", enqueue)
    result = runner.invoke(cli.app, ["scan", SERVER])
    assert result.exit_code == Exit.UNREACHABLE
    assert result.stderr.splitlines() == [
        "error: deployment scan/scan is not registered; run the bootstrap"
    ]
    assert "Traceback" not in result.output


def test_messages_are_printed_verbatim_not_as_markup(monkeypatch: pytest.MonkeyPatch) -> None:
    async def enqueue(*args: Any) -> Enqueued:
        raise DeploymentMissing("[bold]scan/scan[/] missing: [Errno 111]")

    monkeypatch.setattr(cli, "enqueue", enqueue)
    result = runner.invoke(cli.app, ["scan", SERVER])
    assert result.stderr == "error: [bold]scan/scan[/] missing: [Errno 111]\n"


def test_no_prefect_api_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cli_jobs, "PREFECT_API_URL", _Setting(None))
    result = runner.invoke(cli.app, ["update", SERVER])
    assert result.exit_code == Exit.UNREACHABLE
    assert result.stderr.startswith("error: PREFECT_API_URL is not set")
    assert len(result.stderr.splitlines()) == 1


class _Setting:
    def __init__(self, value: str | None) -> None:
        self._value = value

    def value(self) -> str | None:
        return self._value


def _snapshot(
    state: JobState, name: str, message: str | None, percent: float, step: str | None
) -> JobSnapshot:
    return JobSnapshot(
        id=uuid4(),
        name="backup:manual",
        parameters={},
        state=state,
        state_name=name,
        message=message,
        percent=percent,
        step=step,
        attempts=1,
        result=None,
        pool="backup",
        created=None,
        started=None,
        ended=None,
    )


@pytest.mark.parametrize(
    ("state", "name", "message", "code"),
    [
        (JobState.COMPLETED, "Completed", None, 0),
        (JobState.FAILED, "Failed", "SSHAuthError: the server refused our key", 1),
        (JobState.FAILED, "Crashed", "Process exited with status code: -9", 1),
        (JobState.CANCELLED, "Cancelled", "cancelled by admin", 1),
    ],
)
def test_watch_exits_by_the_final_state(
    monkeypatch: pytest.MonkeyPatch, state: JobState, name: str, message: str | None, code: int
) -> None:
    seen: list[JobSnapshot] = []

    async def watch(job_id: UUID, on_update: Any) -> JobSnapshot:
        for snap in (
            _snapshot(JobState.WAITING, "Scheduled", None, 0.0, None),
            _snapshot(JobState.ACTIVE, "Running", None, 40.0, "transfer started"),
            _snapshot(state, name, message, 65.0, "transferring"),
        ):
            on_update(snap)
            seen.append(snap)
        return seen[-1]

    monkeypatch.setattr(cli, "watch", watch)
    job_id = str(uuid4())
    result = runner.invoke(cli.app, ["watch", job_id])

    assert result.exit_code == code, result.output
    assert len(seen) == 3
    if code == 0:
        assert f"job {job_id} completed" in result.stdout
    else:
        last = result.stderr.strip().splitlines()[-1]
        assert last == f"error: job {job_id} {state.value} ({name}): {message}"


def _inventory(tmp_path: Path) -> None:
    (tmp_path / "inventory.yaml").write_text(
        yaml.safe_dump(
            {
                "servers": [
                    {
                        "id": SERVER,
                        "name": "web1",
                        "host": "10.1.2.3",
                        "port": 2200,
                        "username": "root",
                        "private_key_file": "/k",
                        "backup": {"paths": ["/srv"], "schedule": "15 2 * * *"},
                    }
                ]
            }
        )
    )


def test_servers_lists_the_inventory(tmp_path: Path) -> None:
    _inventory(tmp_path)
    result = runner.invoke(cli.app, ["servers"])
    assert result.exit_code == 0, result.output
    for text in (SERVER, "web1", "10.1.2.3:2200", "/srv", "15 2 * * *"):
        assert text in result.stdout


def test_servers_with_a_broken_inventory_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "inventory.yaml").write_text("servers: [{id: 1}]\n")
    result = runner.invoke(cli.app, ["servers"])
    assert result.exit_code == Exit.BAD_INPUT
    assert "server #1" in result.stderr
    assert "Traceback" not in result.output


def _backup(tmp_path: Path) -> Manifest:
    source = tmp_path / "src"
    (source / "d").mkdir(parents=True)
    (source / "d" / "a.txt").write_text("alpha")
    (source / "b.bin").write_bytes(bytes(range(256)) * 10)
    repo = BackupRepository(tmp_path / "backups")
    backup_id = uuid4()
    manifest = Manifest(
        backup_id=backup_id,
        server_id=UUID(SERVER),
        server_name="web1",
        job_id=uuid4(),
        job_type="backup:manual",
        paths=["/srv"],
        archive=repo.archive_name(backup_id, "none"),
        started_at=utcnow(),
    )
    tar = subprocess.run(
        ["tar", "-cf", "-", "-C", str(source), "."], capture_output=True, check=True
    )
    with atomic_file(repo.archive_path(manifest)) as out:
        out.write(tar.stdout)
    manifest = manifest.model_copy(
        update={"size": out.size, "sha256": out.sha256, "status": BackupStatus.COMPLETED}
    )
    repo.save(manifest)
    return manifest


def test_backups_verify_and_restore(tmp_path: Path) -> None:
    manifest = _backup(tmp_path)

    listed = runner.invoke(cli.app, ["backups", SERVER])
    assert listed.exit_code == 0, listed.output
    assert str(manifest.backup_id) in listed.stdout
    assert str(manifest.job_id) in listed.stdout
    assert (manifest.sha256 or "")[:12] in listed.stdout
    assert "completed" in listed.stdout

    verified = runner.invoke(cli.app, ["verify", str(manifest.backup_id)])
    assert verified.exit_code == 0, verified.output
    assert f"backup {manifest.backup_id} OK: 2 files" in verified.stdout

    dest = tmp_path / "restored"
    restored = runner.invoke(cli.app, ["restore", str(manifest.backup_id), str(dest)])
    assert restored.exit_code == 0, restored.output
    assert (dest / "d" / "a.txt").read_text() == "alpha"

    again = runner.invoke(cli.app, ["restore", str(manifest.backup_id), str(dest)])
    assert again.exit_code == Exit.BAD_INPUT
    assert "not empty" in again.stderr
    forced = runner.invoke(cli.app, ["restore", str(manifest.backup_id), str(dest), "--overwrite"])
    assert forced.exit_code == 0, forced.output


def test_ls_lists_the_files_and_restore_takes_only_the_paths_asked(tmp_path: Path) -> None:
    manifest = _backup(tmp_path)
    backup_id = str(manifest.backup_id)

    listed = runner.invoke(cli.app, ["ls", backup_id])
    assert listed.exit_code == 0, listed.output
    rows = [
        [cell.strip() for cell in line.split("│")[1:-1]]
        for line in listed.stdout.splitlines()
        if line.startswith("│")
    ]
    assert sorted((kind, size, path) for kind, size, _, path in rows) == [
        ("dir", "-", "."),
        ("dir", "-", "./d"),
        ("file", "2.5 KiB", "./b.bin"),  # 2,560 bytes
        ("file", "5 B", "./d/a.txt"),
    ]
    under = runner.invoke(cli.app, ["ls", backup_id, "/d"])
    assert under.exit_code == 0, under.output
    assert "d/a.txt" in under.stdout and "b.bin" not in under.stdout
    missing = runner.invoke(cli.app, ["ls", backup_id, "/srv/nope"])
    assert missing.exit_code == Exit.BAD_INPUT
    assert missing.stderr.strip() == "error: not in the archive: '/srv/nope'"

    dest = tmp_path / "one"
    restored = runner.invoke(cli.app, ["restore", backup_id, str(dest), "--path", "/d/a.txt"])
    assert restored.exit_code == 0, restored.output
    assert restored.stdout.strip() == f"backup {backup_id}: restored 1 member into {dest}"
    assert [str(p.relative_to(dest)) for p in dest.rglob("*")] == ["d", "d/a.txt"]
    assert (dest / "d" / "a.txt").read_text() == "alpha"

    refused = runner.invoke(
        cli.app, ["restore", backup_id, str(tmp_path / "two"), "--path", "d", "--path", "e"]
    )
    assert refused.exit_code == Exit.BAD_INPUT
    assert refused.stderr.strip() == "error: not in the archive: 'e'"
    assert not (tmp_path / "two").exists()


def test_verify_of_a_damaged_archive_exits_1_with_the_reason(tmp_path: Path) -> None:
    manifest = _backup(tmp_path)
    archive = BackupRepository(tmp_path / "backups").archive_path(manifest)
    data = bytearray(archive.read_bytes())
    data[700] ^= 0xFF
    archive.write_bytes(bytes(data))

    result = runner.invoke(cli.app, ["verify", str(manifest.backup_id)])

    assert result.exit_code == Exit.FAILED
    actual = hashlib.sha256(bytes(data)).hexdigest()
    assert result.stderr.strip() == (
        f"error: backup {manifest.backup_id}: sha256 {actual} does not match "
        f"the manifest's {manifest.sha256}"
    )


def test_backups_of_an_unknown_server_says_so(tmp_path: Path) -> None:
    result = runner.invoke(cli.app, ["backups", str(uuid4())])
    assert result.exit_code == 0
    assert "no backups of server" in result.stderr


def test_verify_and_restore_search_every_host_repository(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Per-host repositories: a backup written on worker host 2 is found through MM_BACKUP_ROOTS."""
    manifest = _backup(tmp_path)
    (tmp_path / "backups").rename(tmp_path / "host-2")
    missing = runner.invoke(cli.app, ["verify", str(manifest.backup_id)])
    assert missing.exit_code == Exit.BAD_INPUT
    assert f"no backup {manifest.backup_id} in {tmp_path / 'backups'}" in missing.stderr

    monkeypatch.setenv("MM_BACKUP_ROOTS", f"{tmp_path / 'host-1'}:{tmp_path / 'host-2'}")
    get_settings.cache_clear()

    verified = runner.invoke(cli.app, ["verify", str(manifest.backup_id)])
    assert verified.exit_code == 0, verified.output
    listed = runner.invoke(cli.app, ["backups", SERVER])
    assert str(manifest.backup_id) in listed.stdout
    restored = runner.invoke(cli.app, ["restore", str(manifest.backup_id), str(tmp_path / "r")])
    assert restored.exit_code == 0, restored.output
    assert (tmp_path / "r" / "d" / "a.txt").read_text() == "alpha"
    unknown = runner.invoke(cli.app, ["verify", str(uuid4())])
    assert unknown.exit_code == Exit.BAD_INPUT
    assert str(tmp_path / "host-2") in unknown.stderr


def test_clean_enqueues_the_maintenance_flow(monkeypatch: pytest.MonkeyPatch) -> None:
    job_id = UUID("11111111-2222-4333-8444-555555555555")
    asked: list[dict[str, Any]] = []

    async def enqueue_maintenance(parameters: dict[str, Any]) -> Enqueued:
        asked.append(parameters)
        return Enqueued(
            job_id=job_id, deployment="maintenance/maintenance", queue="scan/low", parameters={}
        )

    monkeypatch.setattr(cli, "enqueue_maintenance", enqueue_maintenance)
    result = runner.invoke(cli.app, ["clean", "--dry-run"])

    assert result.exit_code == 0, result.output
    assert result.stdout == f"{job_id}\n"
    assert result.stderr == f"maintenance (dry run) queued on scan/low: jobId {job_id}\n"
    [parameters] = asked
    assert parameters.pop("user_id").startswith("cli:")
    assert parameters == {"dry_run": True}


def test_clean_wait_prints_what_went(monkeypatch: pytest.MonkeyPatch) -> None:
    job_id = uuid4()

    async def enqueue_maintenance(parameters: dict[str, Any]) -> Enqueued:
        return Enqueued(
            job_id=job_id, deployment="maintenance/maintenance", queue="scan/low", parameters={}
        )

    async def watch(job_id: UUID, on_update: Any) -> JobSnapshot:
        done = _snapshot(JobState.COMPLETED, "Completed", None, 100.0, "done")
        on_update(done)
        return done

    async def job_result(wanted: UUID) -> dict[str, Any]:
        assert wanted == job_id
        return {
            "dryRun": False,
            "jobRecordsDeleted": 5,
            "jobRecordsByQueue": {"backup": 2, "scan": 3, "update": 0},
            "archivesRemoved": 4,
            "archivesKept": 9,
            "bytesFreed": 3 * 1024 * 1024,
            "servers": 2,
        }

    monkeypatch.setattr(cli, "enqueue_maintenance", enqueue_maintenance)
    monkeypatch.setattr(cli, "watch", watch)
    monkeypatch.setattr(cli, "job_result", job_result)
    result = runner.invoke(cli.app, ["clean", "--wait"])

    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [
        str(job_id),
        f"job {job_id} completed",
        "deleted 5 job records (backup 2, scan 3, update 0); deleted 4 backup archives"
        " (3.0 MiB); kept 9 archives of 2 servers",
    ]


@pytest.mark.parametrize(
    ("args", "every", "server"),
    [([], False, None), (["--all"], True, None), (["--server", SERVER, "--all"], True, SERVER)],
)
def test_check_enqueues_an_archive_check(
    sent: list[Any], args: list[str], every: bool, server: str | None
) -> None:
    result = runner.invoke(cli.app, ["check", *args])

    assert result.exit_code == 0, result.output
    assert result.stdout == "11111111-2222-4333-8444-555555555555\n"
    [(job_type, parameters, priority)] = sent
    assert job_type is JobType.CHECK_ARCHIVES and priority is None
    assert parameters.pop("user_id").startswith("cli:")
    assert parameters == {
        "all_archives": every,
        "job_type": "check:archives",
        **({"server_id": server} if server else {}),
    }


def test_check_wait_fails_and_lists_the_corrupt_backups(
    sent: list[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    backup_id, job_id = uuid4(), UUID("11111111-2222-4333-8444-555555555555")
    reason = f"ArchiveInvalid: 1 corrupt of 3 archives re-read: backup {backup_id} ..."

    async def watch(wanted: UUID, on_update: Any) -> JobSnapshot:
        done = _snapshot(JobState.FAILED, "Failed", reason, 90.0, "archives re-read")
        on_update(done)
        return done

    async def job_result(wanted: UUID) -> dict[str, Any]:
        assert wanted == job_id
        return {
            "archives": 40,
            "checked": 3,
            "matched": 2,
            "corrupt": [{"serverId": SERVER, "backupId": str(backup_id), "error": "sha256 x"}],
            "unreadable": [],
            "skipped": 0,
            "bytesRead": 2048,
        }

    monkeypatch.setattr(cli, "watch", watch)
    monkeypatch.setattr(cli, "job_result", job_result)
    result = runner.invoke(cli.app, ["check", "--wait"])

    assert result.exit_code == Exit.FAILED, result.output
    assert result.stdout.splitlines()[1:] == [
        "re-read 3 of 40 archives (2.0 KiB): 2 matched, 1 corrupt, 0 unreadable, 0 skipped",
        f"corrupt: backup {backup_id} of server {SERVER}: sha256 x",
    ]
    assert f"job {job_id} failed (Failed): {reason}" in result.stderr


def test_jobs_can_be_asked_for_later(sent: list[Any]) -> None:
    before = datetime.now(UTC)
    later = runner.invoke(cli.app, ["scan", SERVER, "--quick", "--in", "10m"])
    assert later.exit_code == Exit.DONE, later.output
    assert timedelta(minutes=9) < dues[-1] - before <= timedelta(minutes=10, seconds=5)
    assert "delayed until" in later.stderr

    at = runner.invoke(cli.app, ["backup", SERVER, "--at", "tomorrow"])
    assert at.exit_code == Exit.BAD_INPUT
    assert "ISO 8601" in at.stderr
    far = runner.invoke(cli.app, ["backup", SERVER, "--in", "400d"])
    assert far.exit_code == Exit.BAD_INPUT
    assert "366 days" in far.stderr
    soon = (datetime.now(UTC) + timedelta(hours=2)).replace(microsecond=0)
    at = runner.invoke(cli.app, ["update", SERVER, "--at", soon.isoformat()])
    assert at.exit_code == Exit.DONE, at.output
    assert dues[-1] == soon
    past = runner.invoke(cli.app, ["scan", SERVER, "--at", "2020-01-01T00:00Z"])
    assert past.exit_code == Exit.DONE and dues[-1] is None  # a time past: now


@pytest.mark.parametrize(
    "args",
    [
        ["scan", SERVER, "--in", "ten minutes"],
        ["scan", SERVER, "--at", "tomorrow"],
        ["scan", SERVER, "--in", "1m", "--at", "2030-01-01T00:00Z"],
    ],
)
def test_a_bad_time_is_bad_input(sent: list[Any], args: list[str]) -> None:
    result = runner.invoke(cli.app, args)
    assert result.exit_code == Exit.BAD_INPUT, result.output
    assert not sent


# -- --json, for scripts -----------------------------------------------------------------------


def _json(result: Any) -> Any:
    assert result.exit_code in (Exit.DONE, Exit.FAILED), result.output
    return json.loads(result.stdout)


def test_json_of_a_job_asked_for(sent: list[Any]) -> None:
    record = _json(runner.invoke(cli.app, ["backup", SERVER, "--json", "--in", "1h"]))
    [(_, parameters, _)] = sent
    assert record["jobId"] == "11111111-2222-4333-8444-555555555555"
    assert record["queue"] == "pool/queue" and record["backupId"] == parameters["backup_id"]
    record = _json(runner.invoke(cli.app, ["scan", SERVER, "--quick", "--json"]))
    assert record["scanId"] == sent[-1][1]["scan_id"] and record["due"] is None


@pytest.mark.parametrize(("state", "code"), [(JobState.COMPLETED, 0), (JobState.FAILED, 1)])
def test_json_of_a_watched_job_is_the_job_as_it_ended(
    monkeypatch: pytest.MonkeyPatch, state: JobState, code: int
) -> None:
    async def watch(job_id: UUID, on_update: Any) -> JobSnapshot:
        snap = _snapshot(state, state.value.title(), "why", 100.0, "done")
        on_update(snap)
        return snap

    monkeypatch.setattr(cli, "watch", watch)
    result = runner.invoke(cli.app, ["watch", str(uuid4()), "--json"])
    assert result.exit_code == code
    record = json.loads(result.stdout)
    assert record["state"] == state.value and record["message"] == "why"
    assert set(record) >= {"id", "progress", "attempts", "result", "queue", "started", "ended"}


def test_json_of_servers_backups_files_verify_and_restore(tmp_path: Path) -> None:
    _inventory(tmp_path)
    [server] = _json(runner.invoke(cli.app, ["servers", "--json"]))
    assert server["id"] == SERVER and server["port"] == 2200 and server["paths"] == ["/srv"]
    assert "private_key_file" not in server
    manifest = _backup(tmp_path)
    backup_id = str(manifest.backup_id)
    [listed] = _json(runner.invoke(cli.app, ["backups", SERVER, "--json"]))
    assert listed["backupId"] == backup_id and listed["status"] == "completed"
    files = _json(runner.invoke(cli.app, ["ls", backup_id, "--json"]))
    assert sorted((f["type"], f["path"], f["size"]) for f in files) == [
        ("dir", ".", 0),
        ("dir", "./d", 0),
        ("file", "./b.bin", 2560),
        ("file", "./d/a.txt", 5),
    ]
    verified = _json(runner.invoke(cli.app, ["verify", backup_id, "--json"]))
    assert verified["ok"] is True and verified["fileCount"] == 2
    restored = _json(runner.invoke(cli.app, ["restore", backup_id, str(tmp_path / "r"), "--json"]))
    assert restored["backupId"] == backup_id and len(restored["restored"]) >= 2


def test_json_of_pause_and_logs(monkeypatch: pytest.MonkeyPatch) -> None:
    async def set_paused(queue: str | None, paused: bool) -> list[str]:
        return ["backup"]

    monkeypatch.setattr(cli, "set_paused", set_paused)
    assert _json(runner.invoke(cli.app, ["pause", "backup", "--json"])) == {"paused": ["backup"]}
    assert _json(runner.invoke(cli.app, ["resume", "--json"])) == {"resumed": ["backup"]}

    async def follow_logs(job_id: UUID, on_line: Any, **options: Any) -> None:
        for n in range(2):
            on_line(
                LogLine(
                    uuid4(), datetime(2026, 12, 3, tzinfo=UTC), 20, "prefect", f"line {n}", None
                )
            )

    monkeypatch.setattr(cli, "follow_logs", follow_logs)
    result = runner.invoke(cli.app, ["logs", str(uuid4()), "--json"])
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [line["message"] for line in lines] == ["line 0", "line 1"]
    assert lines[0]["level"] == "info" and lines[0]["timestamp"].startswith("2026-12-03")


def test_jobs_lists_by_the_filters_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    asked: list[tuple[Any, ...]] = []

    async def list_jobs(
        queue: str | None, state: JobState | None, server: UUID | None, limit: int
    ) -> tuple[list[JobSnapshot], int]:
        asked.append((queue, state, server, limit))
        return [_snapshot(JobState.FAILED, "Failed", "refused", 100.0, None)], 7

    monkeypatch.setattr(cli, "list_jobs", list_jobs)
    record = _json(
        runner.invoke(
            cli.app, ["jobs", "--queue", "scan", "--state", "failed", "--server", SERVER, "--json"]
        )
    )
    assert asked == [("scan", JobState.FAILED, UUID(SERVER), 50)]
    assert record["count"] == 1 and record["total"] == 7
    assert record["jobs"][0]["state"] == "failed" and record["jobs"][0]["message"] == "refused"
    table = runner.invoke(cli.app, ["jobs"])
    assert table.exit_code == 0 and "Jobs: 1 of 7" in table.stdout and "refused" in table.stdout
    assert runner.invoke(cli.app, ["jobs", "--limit", "500"]).exit_code == Exit.BAD_INPUT
    assert runner.invoke(cli.app, ["jobs", "--server", "web-1"]).exit_code == Exit.BAD_INPUT
