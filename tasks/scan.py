"""A scan: record it, ask the server its questions (the task), store and show the answers.

Only the part that talks to the server is a Prefect task, with retries. The records are local
files written in the flow: as tasks they added nine state events per scan for Prefect's server
to store and evaluate, a large share of what a quick scan cost it.
"""

from __future__ import annotations

from typing import Any
from uuid import UUID

from prefect import task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE

from tasks.core.inventory import Server
from tasks.probes import FULL_PROBES, QUICK_PROBES, summary_rows
from tasks.progress import Progress
from tasks.remote import Connection, session_for
from tasks.repository import utcnow
from tasks.results import ScanRecord, save_scan
from tasks.retry import RETRY_POLICY
from tasks.ssh import open_session


def create_scan_record(
    server: Server, scan_id: UUID, job_id: UUID | None, user_id: str | None, job_type: str
) -> ScanRecord:
    record = ScanRecord(
        scan_id=scan_id,
        server_id=server.id,
        server_name=server.name,
        job_id=job_id,
        user_id=user_id,
        job_type=job_type,
        started_at=utcnow(),
    )
    save_scan(record)
    return record


@task(name="scan server", cache_policy=NO_CACHE, **RETRY_POLICY)
def scan_server(
    server: Server, quick: bool, progress: Progress, connection: Connection | None = None
) -> dict[str, Any]:
    """Connect (host key checked, key accepted), then run each probe over that connection.

    A probe that fails is reported, not fatal; a connection that fails is the task's failure,
    retried unless permanent (tasks.core.errors).
    """
    probes = QUICK_PROBES if quick else FULL_PROBES
    results: dict[str, Any] = {}
    with session_for(server, connection, open_session) as ssh:
        ssh.connect()
        progress.milestone(30, "server verified")
        for done, probe in enumerate(probes, start=1):
            answer = ssh.run(probe.argv, check=False)
            if answer.exit_status == 0:
                results[probe.name] = probe.parse(answer.text)
            else:
                results[probe.name] = {
                    "error": f"exit {answer.exit_status}: {answer.stderr_tail(3)}"
                }
            progress.between(40, 80, done, len(probes), f"scanning: {probe.name}")
    return results


def store_scan_results(record: ScanRecord, results: dict[str, Any]) -> ScanRecord:
    done = record.model_copy(
        update={"results": results, "status": "completed", "finished_at": utcnow()}
    )
    save_scan(done)
    create_table_artifact(
        key=f"scan-{record.server_id}",
        table=summary_rows(results),
        description=f"{record.job_type} of {record.server_name}",
    )
    return done


def fail_scan_record(record: ScanRecord, error: str) -> None:
    save_scan(
        record.model_copy(update={"status": "failed", "finished_at": utcnow(), "error": error})
    )
