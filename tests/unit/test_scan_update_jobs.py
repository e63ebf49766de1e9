"""The scan and update jobs' logic over the fake SSH server: the probes and the update command
sent, what is recorded, the progress, and which failures would be retried.

The same flows against a real sshd and a real Prefect: tests/integration/test_scan_update.py.
"""

from __future__ import annotations

import json
import shlex
import uuid

import pytest

from flows.scan import scan
from flows.update import update
from tasks.core.errors import (
    CommandOutcomeUnknown,
    InvalidOptions,
    RemoteCommandFailed,
    SSHAuthError,
    SSHConnectError,
    SSHTimeout,
    is_retryable,
)
from tasks.probes import FULL_PROBES, QUICK_PROBES, QUICK_SCRIPT
from tasks.results import UpdateRecord, scan_path, update_path
from tasks.server_slot import slot_name
from tests.support.offline import Offline, offline

__all__ = ["offline"]

SYSTEM = b"hostname\tweb1\nos\tDebian GNU/Linux 12\nkernel\t6.1.0\nuptime\t1234.5\n"
UPDATE = "apt-get update && apt-get -y upgrade"


def test_a_full_scan_asks_every_probe_over_one_connection_and_stores_the_answers(
    offline: Offline,
) -> None:
    server = offline.add_server()
    offline.fake.reply(["sh", "-c", QUICK_SCRIPT], stdout=SYSTEM)
    offline.fake.reply(["cat", "/proc/meminfo"], stdout=b"MemTotal: 2048 kB\n")
    offline.fake.reply(["cat", "/etc/os-release"], status=1, stderr=b"cat: no such file\n")
    offline.fake.reply(lambda command: True, stdout=b"absent\n")  # the other probes
    scan_id = uuid.uuid4()

    result = scan.fn(server_id=server.id, scan_id=scan_id, job_type="scan:full")

    assert offline.fake.commands == [shlex.join(probe.argv) for probe in FULL_PROBES]
    assert offline.fake.connections == 1
    results = result["results"]
    assert results["system"] == {
        "hostname": "web1",
        "os": "Debian GNU/Linux 12",
        "kernel": "6.1.0",
        "uptimeSeconds": 1234.5,
    }
    assert results["memory"]["totalBytes"] == 2048 * 1024
    # A failing probe is reported, not fatal.
    assert results["os"] == {"error": "exit 1: cat: no such file"}
    stored = json.loads(scan_path(server.id, scan_id).read_text())
    assert stored["status"] == "completed" and stored["results"] == results
    assert offline.artifacts[0]["key"] == f"scan-{server.id}"
    assert offline.slots == []  # a scan only reads: it may run beside a backup or an update


def test_a_quick_scan_sends_one_probe_and_reports_its_milestones(offline: Offline) -> None:
    server = offline.add_server()
    offline.fake.reply(["sh", "-c", QUICK_SCRIPT], stdout=SYSTEM)

    scan.fn(server_id=server.id, scan_id=uuid.uuid4(), job_type="scan:quick")

    assert offline.fake.commands == [shlex.join(QUICK_PROBES[0].argv)]
    assert offline.progress.milestones == [
        (10, "started"),
        (20, "scan record created"),
        (30, "server verified"),
        (90, "results stored"),
        (100, "done"),
    ]
    assert (80.0, "scanning: system") in offline.progress.updates


@pytest.mark.parametrize(
    ("error", "retryable"),
    [(SSHAuthError("refused"), False), (SSHConnectError("refused"), True)],
)
def test_a_failed_connection_fails_the_scan_record_and_retries_only_if_transient(
    offline: Offline, error: Exception, retryable: bool
) -> None:
    server = offline.add_server()
    offline.fake.fail_connect(error)  # type: ignore[arg-type]
    scan_id = uuid.uuid4()

    with pytest.raises(type(error)) as raised:
        scan.fn(server_id=server.id, scan_id=scan_id, job_type="scan:quick")

    assert is_retryable(raised.value) is retryable
    assert offline.fake.commands == []
    assert (30, "server verified") not in offline.progress.milestones
    stored = json.loads(scan_path(server.id, scan_id).read_text())
    assert stored["status"] == "failed" and stored["error"] == "refused"


def test_an_update_checks_the_server_then_runs_its_command_as_written_on_the_same_link(
    offline: Offline,
) -> None:
    server = offline.add_server(update={"command": UPDATE})
    offline.fake.reply(["uname", "-srm"], stdout=b"Linux 6.1.0 x86_64\n")
    offline.fake.reply(UPDATE, stdout=b"Reading lists\nDone\n", stderr=b"W: a warning\n")
    update_id = uuid.uuid4()

    result = update.fn(server_id=server.id, update_id=update_id)

    assert offline.fake.commands == ["uname -srm", UPDATE]
    assert offline.fake.sessions == 1
    assert offline.slots == [slot_name(server)]
    assert result["status"] == "completed" and result["exitStatus"] == 0
    path = update_path(server.id, update_id)
    stored = UpdateRecord.model_validate_json(path.read_text())
    assert stored.status == "completed" and stored.stderr_tail == "W: a warning"
    log = path.with_suffix(".log").read_text()
    assert log == "stdout: Reading lists\nstdout: Done\nstderr: W: a warning\n"
    assert [p for p, _ in offline.progress.milestones] == [10, 20, 30, 40, 90, 100]


def test_a_failed_update_records_its_status_and_output_and_is_not_retried(
    offline: Offline,
) -> None:
    server = offline.add_server(update={"command": UPDATE})
    offline.fake.reply(["uname", "-srm"], stdout=b"Linux\n")
    offline.fake.reply(UPDATE, status=100, stderr=b"E: Unable to lock\n")
    update_id = uuid.uuid4()

    with pytest.raises(RemoteCommandFailed) as raised:
        update.fn(server_id=server.id, update_id=update_id)

    assert str(raised.value) == "web1: the update command exited with status 100"
    assert not is_retryable(raised.value)
    stored = UpdateRecord.model_validate_json(update_path(server.id, update_id).read_text())
    assert stored.status == "failed" and stored.exit_status == 100
    assert stored.stderr_tail == "E: Unable to lock"
    assert UPDATE in (stored.error or "")  # the operator's own record has the command


def test_an_update_that_times_out_is_not_run_again(offline: Offline) -> None:
    """It may still be running on the server: the job fails and says so, and a second try of
    the same job (a crashed run run again) refuses instead of sending the command twice."""
    server = offline.add_server(update={"command": UPDATE, "timeout": 5})
    offline.fake.reply(["uname", "-srm"], stdout=b"Linux\n")
    offline.fake.reply(UPDATE, raises=SSHTimeout("web1: command still running after 5 s"))
    update_id = uuid.uuid4()

    with pytest.raises(CommandOutcomeUnknown) as raised:
        update.fn(server_id=server.id, update_id=update_id)

    assert not is_retryable(raised.value)
    assert "may still be running there" in str(raised.value)
    stored = UpdateRecord.model_validate_json(update_path(server.id, update_id).read_text())
    assert stored.status == "failed" and "still running" in (stored.error or "")
    assert stored.outcome_unknown

    slots = len(offline.slots)
    with pytest.raises(CommandOutcomeUnknown, match="earlier try"):
        update.fn(server_id=server.id, update_id=update_id)
    assert offline.fake.commands.count(UPDATE) == 1
    # Refused before waiting for the server: the dead try's slot may still be leased.
    assert len(offline.slots) == slots
    refused = UpdateRecord.model_validate_json(update_path(server.id, update_id).read_text())
    assert refused.status == "failed" and "not run again" in (refused.error or "")


def test_an_update_that_could_not_connect_is_retryable_and_runs_on_the_next_try(
    offline: Offline,
) -> None:
    server = offline.add_server(update={"command": UPDATE})
    offline.fake.reply(["uname", "-srm"], stdout=b"Linux\n")
    offline.fake.reply(UPDATE, stdout=b"Done\n")
    offline.fake.fail_connect(SSHConnectError("web1: connection refused"))
    update_id = uuid.uuid4()

    with pytest.raises(SSHConnectError) as raised:
        update.fn(server_id=server.id, update_id=update_id)
    assert is_retryable(raised.value)
    assert UPDATE not in offline.fake.commands

    result = update.fn(server_id=server.id, update_id=update_id)
    assert result["status"] == "completed"
    assert offline.fake.commands.count(UPDATE) == 1


def test_a_server_without_an_update_command_is_refused_before_it_runs(offline: Offline) -> None:
    server = offline.add_server()
    offline.fake.reply(["uname", "-srm"], stdout=b"Linux\n")
    with pytest.raises(InvalidOptions, match=r"no `update\.command`"):
        update.fn(server_id=server.id, update_id=uuid.uuid4())
    assert offline.fake.commands == ["uname -srm"]
