"""The backup job's logic over the fake SSH server: what it asks the server, in which order,
what it records and reports, and which of its failures would be retried.

The same flow against a real sshd and a real Prefect: tests/integration/test_backup.py.
"""

from __future__ import annotations

import io
import shlex
import tarfile
import uuid

import pytest

from flows.backup import backup
from tasks.archive_listing import load_listing
from tasks.backup import _PLAN_SCRIPT, BackupPlan, plan_backup, plan_command, tar_command
from tasks.core.errors import (
    CommandOutcomeUnknown,
    InvalidOptions,
    RemoteCommandFailed,
    RemotePathMissing,
    SSHDisconnected,
    is_retryable,
)
from tasks.core.jobs import BackupOptions
from tasks.fake_ssh import FakeSSH
from tasks.remote import Connection
from tasks.repository import LISTING_SUFFIX, BackupRepository, BackupStatus
from tasks.server_slot import slot_name
from tests.support.offline import Offline, offline

__all__ = ["offline"]

PATHS = ["/srv/app data", "/etc/app;$(touch /tmp/pwned)"]
PRE = "docker stop app"
POST = "docker start app"
#: What the plan script answers for PATHS: both codecs, 3 files of 3,000 bytes.
PLAN_ANSWER = b"codec\tzstd\ncodec\tgzip\nestimate\t3\t3000\n"


def tar_bytes(files: dict[str, bytes]) -> bytes:
    """An uncompressed tar archive holding `files`, as the remote tar would send it."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as archive:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return out.getvalue()


ARCHIVE = tar_bytes({"srv/app data/a.txt": b"a" * 1000, "etc/b": b"b" * 2000, "etc/c": b""})


def script(fake: FakeSSH, *, tar_status: int = 0, pre: int = 0, post: int = 0) -> None:
    fake.reply(plan_command(PATHS), stdout=PLAN_ANSWER)
    fake.reply(PRE, status=pre, stderr=b"pre failed\n" if pre else b"")
    fake.reply(POST, status=post, stderr=b"post failed\n" if post else b"")
    fake.reply(
        tar_command(PATHS, "none"),
        status=tar_status,
        stdout=ARCHIVE if tar_status in (0, 1) else b"",
        stderr=b"tar: etc: file changed as we read it\n" if tar_status else b"",
    )


def run(offline: Offline, server_id: uuid.UUID, backup_id: uuid.UUID) -> dict:
    return backup.fn(
        server_id=server_id,
        backup_id=backup_id,
        user_id="user-1",
        options=BackupOptions(compression="none"),
    )


def hooked(offline: Offline, **backup: object):
    return offline.add_server(backup={"paths": PATHS, "pre": PRE, "post": POST, **backup})


# --- planning ---------------------------------------------------------------------------------


def test_the_plan_sends_each_path_as_one_quoted_argument_and_reads_the_answer(
    offline: Offline, monkeypatch: pytest.MonkeyPatch
) -> None:
    # This host reads both codecs back (tests/unit/test_backup_plan.py: when it does not).
    monkeypatch.setattr("tasks.repository.shutil.which", lambda name: f"/usr/bin/{name}")
    server = hooked(offline)
    offline.fake.reply(plan_command(PATHS), stdout=PLAN_ANSWER)
    with Connection(server, offline.fake.open) as connection:
        plan = plan_backup.fn(server, BackupOptions(compression=True), connection)

    sent = offline.fake.commands[0]
    assert shlex.split(sent) == ["sh", "-c", _PLAN_SCRIPT, "sh", *PATHS]
    assert "$(touch /tmp/pwned)'" in sent  # inside single quotes: a path, never run
    # zstd preferred when both are there; tar's headers and padding counted in.
    assert plan == BackupPlan(
        compression="zstd", estimated_bytes=3000 + 3 * 1024, estimated_files=3
    )


def test_the_tar_command_names_paths_after_the_double_dash_relative_to_root() -> None:
    assert tar_command(["/srv/a", "/"], "gzip") == [
        "tar",
        "--create",
        "--file=-",
        "--directory=/",
        "--gzip",
        "--",
        "srv/a",
        ".",
    ]


def test_a_missing_path_fails_at_once_naming_it(offline: Offline) -> None:
    server = hooked(offline)
    offline.fake.reply(plan_command(PATHS), status=3, stdout=b"missing\t/srv/app data\n")
    with pytest.raises(RemotePathMissing) as raised:
        plan_backup.fn(server, BackupOptions(), Connection(server, offline.fake.open))
    assert "'/srv/app data' not found" in str(raised.value)
    assert not is_retryable(raised.value)


def test_a_codec_the_server_lacks_is_refused(offline: Offline) -> None:
    server = hooked(offline)
    offline.fake.reply(plan_command(PATHS), stdout=b"codec\tgzip\nestimate\t0\t0\n")
    with pytest.raises(InvalidOptions, match="zstd is not installed"):
        plan_backup.fn(
            server, BackupOptions(compression="zstd"), Connection(server, offline.fake.open)
        )


# --- the flow: hooks, records, progress, connections ------------------------------------------


def test_a_backup_runs_pre_then_tar_then_post_over_one_connection(offline: Offline) -> None:
    server = hooked(offline)
    script(offline.fake)
    backup_id = uuid.uuid4()

    result = run(offline, server.id, backup_id)

    plan, pre, tar, post = offline.fake.commands
    assert (pre, post) == (PRE, POST)
    assert plan == shlex.join(plan_command(PATHS))
    assert tar == shlex.join(tar_command(PATHS, "none"))
    assert offline.fake.sessions == 1 and offline.fake.connections == 1
    assert offline.fake.calls[-1].kind == "close"  # the flow closed it
    assert offline.slots == [slot_name(server)]  # no update or other backup of it meanwhile
    repo = BackupRepository(offline.tmp_path / "backups")
    manifest = repo.read(server.id, backup_id)
    assert manifest is not None and manifest.status is BackupStatus.COMPLETED
    assert manifest.size == len(ARCHIVE) and manifest.file_count == 3
    assert manifest.user_id == "user-1"
    assert result["status"] == "completed" and result["sha256"] == manifest.sha256
    # The listing, from the verification's read of the stored archive.
    listed = load_listing(repo.listing_path(manifest))
    assert [(m.path, m.type, m.size) for m in listed] == [
        ("srv/app data/a.txt", "file", 1000),
        ("etc/b", "file", 2000),
        ("etc/c", "file", 0),
    ]


def test_progress_passes_every_milestone_in_order(offline: Offline) -> None:
    server = hooked(offline)
    script(offline.fake)
    run(offline, server.id, uuid.uuid4())

    assert offline.progress.milestones == [
        (10, "started"),
        (20, "server verified"),
        (30, "backup record created"),
        (40, "transfer started"),
        (90, "transfer done"),
        (100, "backup record updated"),
    ]
    percents = [percent for percent, _ in offline.progress.updates]
    assert percents == sorted(percents)
    between = [p for p, m in offline.progress.updates if m == "transferring"]
    assert between and all(40 < p <= 90 for p in between)


def test_post_runs_after_a_failed_transfer_and_the_backup_is_marked_failed(
    offline: Offline,
) -> None:
    server = hooked(offline)
    script(offline.fake, tar_status=2)
    backup_id = uuid.uuid4()
    repo = BackupRepository(offline.tmp_path / "backups")
    # As if an earlier try wrote its listing and died before it said completed.
    earlier = repo.server_dir(server.id) / f"{backup_id}{LISTING_SUFFIX}"
    earlier.parent.mkdir(parents=True)
    earlier.write_text("")

    with pytest.raises(RemoteCommandFailed) as raised:
        run(offline, server.id, backup_id)

    assert offline.fake.commands[1:] == [PRE, shlex.join(tar_command(PATHS, "none")), POST]
    assert raised.value.exit_status == 2 and not is_retryable(raised.value)
    manifest = repo.read(server.id, backup_id)
    assert manifest is not None and manifest.status is BackupStatus.FAILED
    assert "tar exited with status 2" in (manifest.error or "")
    assert not repo.archive_path(manifest).exists()
    assert not repo.listing_path(manifest).exists()
    assert not list(repo.server_dir(server.id).glob("*.partial"))


def test_a_failed_pre_skips_the_transfer_but_still_runs_post(offline: Offline) -> None:
    server = hooked(offline)
    script(offline.fake, pre=4)

    with pytest.raises(RemoteCommandFailed) as raised:
        run(offline, server.id, uuid.uuid4())

    assert offline.fake.commands[1:] == [PRE, POST]
    # Users read the message: the step and the status, never the command's text.
    assert str(raised.value) == "web1: the pre command exited with status 4"
    assert PRE in (raised.value.detail or "")
    assert offline.artifacts[0]["data"]["summary"] == str(raised.value)


def test_a_pre_command_whose_link_dropped_is_not_run_again_and_post_still_runs(
    offline: Offline,
) -> None:
    """It started and may still run there: the job fails at once, not after three more tries
    of a command that, say, stops a database; the post command runs as after any pre."""
    server = hooked(offline)
    # First in the script, so that it answers the pre command before `script`'s reply does.
    offline.fake.reply(PRE, raises=SSHDisconnected("web1: connection dropped"))
    script(offline.fake)

    with pytest.raises(CommandOutcomeUnknown) as raised:
        run(offline, server.id, uuid.uuid4())

    assert not is_retryable(raised.value)
    assert "the pre command started and its end was not seen" in str(raised.value)
    assert offline.fake.commands.count(PRE) == 1
    assert offline.fake.commands[-1] == POST


def test_a_try_that_died_between_pre_and_post_gets_its_post_first_on_the_next(
    offline: Offline,
) -> None:
    """A run killed after pre (SIGKILL: no post ran) left the server as pre left it; the re-run
    runs post before anything else, then the backup as usual."""
    server = hooked(offline)
    # First in the script: the first try's tar fails, the next one's works (`script`'s reply).
    offline.fake.reply(tar_command(PATHS, "none"), status=2, times=1)
    script(offline.fake)
    backup_id = uuid.uuid4()
    repo = BackupRepository(offline.tmp_path / "backups")
    with pytest.raises(RemoteCommandFailed):
        run(offline, server.id, backup_id)
    # What a try killed between its pre and its post commands leaves: post owed.
    died = repo.read(server.id, backup_id)
    assert died is not None
    repo.save(died.model_copy(update={"post_pending": True}))
    sent = len(offline.fake.commands)

    result = run(offline, server.id, backup_id)

    assert result["status"] == "completed"
    _, first_post, pre, _, post = offline.fake.commands[sent:]
    assert (first_post, pre, post) == (POST, PRE, POST)
    done = repo.read(server.id, backup_id)
    assert done is not None and not done.post_pending


def test_pre_marks_post_as_owed_until_post_ran(offline: Offline) -> None:
    server = hooked(offline)
    script(offline.fake, tar_status=2)
    backup_id = uuid.uuid4()
    with pytest.raises(RemoteCommandFailed):
        run(offline, server.id, backup_id)
    # The failed try ran its post: nothing is owed to the next one.
    failed = BackupRepository(offline.tmp_path / "backups").read(server.id, backup_id)
    assert failed is not None and failed.status is BackupStatus.FAILED
    assert not failed.post_pending


def test_a_failed_post_fails_the_job_but_keeps_the_good_archive(offline: Offline) -> None:
    server = hooked(offline)
    script(offline.fake, post=5)
    backup_id = uuid.uuid4()

    with pytest.raises(RemoteCommandFailed, match="the post command exited with status 5"):
        run(offline, server.id, backup_id)

    manifest = BackupRepository(offline.tmp_path / "backups").read(server.id, backup_id)
    assert manifest is not None and manifest.status is BackupStatus.COMPLETED


def test_files_changed_while_read_still_complete_the_backup(offline: Offline) -> None:
    server = offline.add_server(backup={"paths": PATHS})
    script(offline.fake, tar_status=1)
    result = run(offline, server.id, uuid.uuid4())
    assert result["status"] == "completed" and result["fileCount"] == 3
    assert [c for c in offline.fake.commands if c in (PRE, POST)] == []


def test_a_completed_backup_is_never_transferred_again(offline: Offline) -> None:
    server = hooked(offline)
    script(offline.fake)
    backup_id = uuid.uuid4()
    first = run(offline, server.id, backup_id)
    sent = len(offline.fake.commands)

    again = run(offline, server.id, backup_id)

    assert again["sha256"] == first["sha256"]
    assert offline.fake.commands[sent:] == [shlex.join(plan_command(PATHS))]  # no hook, no tar


def test_a_link_dropped_mid_transfer_is_retryable_and_post_gets_a_new_connection(
    offline: Offline,
) -> None:
    server = hooked(offline)
    offline.fake.reply(
        lambda command: command.startswith("tar "), raises=SSHDisconnected("link dropped")
    )
    script(offline.fake)

    with pytest.raises(SSHDisconnected) as raised:
        run(offline, server.id, uuid.uuid4())

    assert is_retryable(raised.value)
    assert offline.fake.commands[-1] == POST
    post = [call for call in offline.fake.calls if call.command == POST]
    assert post[0].session == 2  # the broken session was not reused


# --- pings ------------------------------------------------------------------------------------


def test_pings_say_start_then_success_or_failure_without_the_commands_text(
    offline: Offline, monkeypatch: pytest.MonkeyPatch
) -> None:
    import tasks.pings

    sent: list[tasks.pings.Ping] = []
    monkeypatch.setattr(tasks.pings, "send", lambda ping, logger: sent.append(ping) or True)
    url = "https://hc.example/ping/token"
    server = hooked(offline, ping_url=url)
    script(offline.fake)
    run(offline, server.id, uuid.uuid4())
    assert [(p.method, p.url.split("?")[0]) for p in sent] == [
        ("GET", f"{url}/start"),
        ("GET", url),
    ]
    sent.clear()
    offline.fake = FakeSSH()  # a server whose post command now fails
    script(offline.fake, post=5)
    with pytest.raises(RemoteCommandFailed):
        run(offline, server.id, uuid.uuid4())
    start, failure = sent
    assert start.url.startswith(f"{url}/start")
    assert failure.method == "POST" and failure.url.startswith(f"{url}/fail")
    assert failure.body and "the post command exited with status 5" in failure.body
    # The reason users read: the hook's text and output stay the admins'.
    assert POST not in failure.body and "post failed" not in failure.body
