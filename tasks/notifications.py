"""Messages to operators: the Apprise block that delivers them, the events the jobs emit for
them, and the failed-jobs digest that flows/notify.py sends.

Prefect does the rest (deployments/control/notifications.py): its automations watch these
events and the flow runs' own, and its SendNotification action or the digest flow sends through
one block of `AppriseURLs` per target. The block class is here, below flows/ and deployments/,
because both the digest flow (in a worker) and Prefect's server (its actions service, which
loads a block's class by slug) need to import it: pyproject.toml's `prefect.collections` entry
point names this module, and Prefect loads those entry points before it looks a block class up
(`Block.get_block_class_from_key`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, ClassVar
from uuid import UUID

from prefect.blocks.notifications import AppriseNotificationBlock
from pydantic import Field, SecretStr

from tasks.core.inventory import Server

#: `prefect.resource.id` prefix of a server in our events: `medicine-man.server.<id>`.
SERVER_RESOURCE = "medicine-man.server."
#: A backup of the server completed (flows/backup.py); the payload's `last_backup` says when.
BACKUP_COMPLETED = "medicine-man.backup.completed"
#: A completed backup ended an incident: the one before had failed, or was stale.
BACKUP_RECOVERED = "medicine-man.backup.recovered"
#: Arms the dead-man's switch of a scheduled server (the bootstrap, for each start).
BACKUP_WATCHED = "medicine-man.backup.watched"
#: A check run found corrupt or unreadable backups (flows/check.py); one per run.
BACKUPS_CORRUPT = "medicine-man.backups.corrupt"

#: The most failures a digest lists one by one; the count covers the rest.
DIGEST_LISTED = 50


class AppriseURLs(AppriseNotificationBlock):
    """One or more Apprise URLs (mailto://, json://, ntfy://, slack://, ...) told at once.

    Prefect's concrete Apprise blocks each build one service's URL; this one takes Apprise's
    own, which `Apprise.add` accepts separated by spaces or commas.
    """

    _block_type_name: ClassVar[str] = "Medicine Man Apprise URLs"
    _block_type_slug: ClassVar[str] = "medicine-man-apprise-urls"
    _description: ClassVar[str] = (
        "Apprise URLs the job system's notifications go to (mailto://, json://, ntfy://, ...)."
    )

    url: SecretStr = Field(
        default=...,
        title="Apprise URLs",
        description="One or more Apprise URLs, separated by spaces or commas.",
        examples=["mailtos://user:password@smtp.example.com?to=ops@example.com"],
    )


def server_resource(server: Server) -> dict[str, str]:
    """The resource of a server in our events: its id and, for messages, its name."""
    return {
        "prefect.resource.id": f"{SERVER_RESOURCE}{server.id}",
        "prefect.resource.name": server.name,
    }


@dataclass(frozen=True)
class Failure:
    """One job in a digest: what failed where, why, and where to look."""

    run_id: UUID
    job_type: str
    server: str
    reason: str
    link: str | None
    ended: datetime | None


def render_digest(failures: list[Failure], window_seconds: float) -> tuple[str, str]:
    """Subject and body of one digest, readable in a mail: the count, then each job."""
    count = len(failures)
    minutes = max(1, round(window_seconds / 60))
    noun = "job" if count == 1 else "jobs"
    servers = sorted({f.server for f in failures})
    where = servers[0] if len(servers) == 1 else f"{len(servers)} servers"
    subject = f"medicine-man: {count} {noun} failed on {where}"
    lines = [f"{count} {noun} failed after all their attempts within {minutes} min:", ""]
    for failure in sorted(failures, key=lambda f: (f.ended or datetime.min, str(f.run_id)))[
        :DIGEST_LISTED
    ]:
        lines.append(f"- {failure.job_type} on {failure.server}: {failure.reason}")
        if failure.link:
            lines.append(f"  {failure.link}")
    if count > DIGEST_LISTED:
        lines.append(f"... and {count - DIGEST_LISTED} more (Prefect UI: Runs, state Failed)")
    return subject, "\n".join(lines)


def failure_of(
    run_id: UUID,
    parameters: dict[str, Any],
    message: str | None,
    names: dict[str, str],
    link: str | None,
    ended: datetime | None,
    run_name: str = "",
) -> Failure:
    """A failed run as a digest lists it; `names`: server names by id. A job type left at its
    default is not among the parameters, but begins the run's name (`{job_type} {server_id}`)."""
    server_id = str(parameters.get("server_id") or "")
    return Failure(
        run_id=run_id,
        job_type=str(parameters.get("job_type") or (run_name.split() or ["job"])[0]),
        server=names.get(server_id, server_id or "no server"),
        # The state message is what users read; command text and output stay in the artifact.
        reason=(message or "failed").strip().splitlines()[0][:300],
        link=link,
        ended=ended,
    )


def server_names(servers: Iterable[Server]) -> dict[str, str]:
    return {str(server.id): server.name for server in servers}
