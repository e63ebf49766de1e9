"""Tasks of a server update: run its update command, its output streamed into the run's logs."""

from __future__ import annotations

from collections import deque
from uuid import UUID

from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.core.errors import CommandOutcomeUnknown, InvalidOptions, RemoteCommandFailed
from tasks.core.inventory import Server
from tasks.outcome import command_output_logger, failure_published
from tasks.remote import Connection, run_once, session_for
from tasks.repository import utcnow
from tasks.results import UpdateRecord, load_update, save_update
from tasks.retry import RETRY_POLICY
from tasks.ssh import open_session

LOG_LINES_KEPT = 10_000


def update_command(server: Server) -> str:
    if server.update is None or not server.update.command:
        raise InvalidOptions(f"{server.name} has no `update.command` in the inventory")
    return server.update.command


@task(name="refuse an unseen command", cache_policy=NO_CACHE)
def refuse_unseen_command(server: Server, update_id: UUID) -> None:
    """Fail this job if an earlier try of it (a run that crashed and is run again) sent the
    command and never saw it end: it may have done its work, or still be doing it.

    Asked before the job waits for its server: the dead try's slot may stay held until its
    lease runs out, and a job that will refuse anyway need not wait for it.
    """
    earlier = load_update(server.id, update_id)
    if earlier is None or not earlier.outcome_unknown:
        return
    refusal = CommandOutcomeUnknown(
        f"{server.name}: the update command of this job started at"
        f" {earlier.command_started_at:%Y-%m-%d %H:%M:%S} UTC in an earlier try and its end"
        " was not seen; it is not run again. Check the server, then enqueue a new update"
    )
    save_update(
        earlier.model_copy(
            update={"status": "failed", "finished_at": utcnow(), "error": str(refusal)}
        )
    )
    raise refusal


@task(name="create update record", cache_policy=NO_CACHE)
def create_update_record(
    server: Server, update_id: UUID, job_id: UUID | None, user_id: str | None, job_type: str
) -> UpdateRecord:
    record = UpdateRecord(
        update_id=update_id,
        server_id=server.id,
        server_name=server.name,
        job_id=job_id,
        user_id=user_id,
        job_type=job_type,
        command=update_command(server),
        started_at=utcnow(),
    )
    save_update(record)
    return record


@task(name="run update", cache_policy=NO_CACHE, **RETRY_POLICY)
def run_update(
    server: Server, record: UpdateRecord, connection: Connection | None = None
) -> UpdateRecord:
    """Run the command; every output line goes to the flow-run log and the update's log file."""
    output = command_output_logger()
    lines: deque[str] = deque(maxlen=LOG_LINES_KEPT)

    def on_line(stream: str, line: str) -> None:
        lines.append(f"{stream}: {line}")
        (output.warning if stream == "stderr" else output.info)("%s", line)

    assert server.update is not None
    with failure_published(), session_for(server, connection, open_session) as ssh:
        ssh.connect()  # A failure to connect is retried; the command has not started.
        # Stored before the command goes out: a run that dies from here on is not run again.
        record = record.model_copy(update={"command_started_at": utcnow()})
        save_update(record)
        try:
            result = run_once(
                ssh,
                record.command,
                on_line,
                timeout=server.update.timeout,
                label="the update command",
            )
        except RemoteCommandFailed as exc:
            save_update(
                record.model_copy(
                    update={
                        "status": "failed",
                        "finished_at": utcnow(),
                        "exit_status": exc.exit_status,
                        "stderr_tail": exc.stderr_tail,
                        # The operator's own record: the whole story.
                        "error": exc.detail or str(exc),
                    }
                ),
                log="\n".join(lines) + "\n",
            )
            raise
    done = record.model_copy(
        update={
            "status": "completed",
            "finished_at": utcnow(),
            "exit_status": result.exit_status,
            "stderr_tail": result.stderr_tail() or None,
        }
    )
    save_update(done, log="\n".join(lines) + "\n")
    return done


@task(name="record update failure", cache_policy=NO_CACHE)
def fail_update_record(record: UpdateRecord, error: str) -> None:
    # The stored record, not the flow's copy: it may say that the command started.
    stored = load_update(record.server_id, record.update_id) or record
    save_update(
        stored.model_copy(update={"status": "failed", "finished_at": utcnow(), "error": error})
    )
