"""The parameters of each flow: what a job asks for, what a backup's options come to with the
inventory and the settings, and the one run tag a job sets itself. Plain pydantic, no Prefect,
no SSH."""

from __future__ import annotations

from enum import StrEnum
from typing import Literal
from uuid import UUID

from pydantic import BaseModel, ConfigDict, StrictBool

from tasks.core.errors import InvalidOptions
from tasks.core.inventory import BackupSpec, Server
from tasks.core.settings import EncryptionSettings


class JobType(StrEnum):
    """The job types of the original system and ours, each a flow run of one deployment."""

    #: A backup someone asked for.
    BACKUP_MANUAL = "backup:manual"
    #: A backup started by a server's cron schedule.
    BACKUP_SCHEDULED = "backup:scheduled"
    #: OS, hardware, disks, containers and services of a server.
    SCAN_FULL = "scan:full"
    #: A connectivity check: uptime and OS.
    SCAN_QUICK = "scan:quick"
    #: The server's update command.
    UPDATE_SERVER = "update:server"
    #: Stored archives re-read against their manifests (new: scheduled, and on demand).
    CHECK_ARCHIVES = "check:archives"


#: Tag of a Running flow run that waits for its server's slot (tasks/server_slot.py), so that it
#: shows as `waiting` (deployments/control/states.py); a tag, not a state: Running -> Running
#: would count one more attempt in Prefect's `run_count`. Also shown in Prefect's UI.
WAITING_FOR_SERVER_TAG = "waiting-for-server"


# The job types of each flow's `job_type` parameter, as members of the one enum: a flow run's
# parameters arrive as strings, which these Literals accept (a StrEnum member equals its value).
BackupJob = Literal[JobType.BACKUP_MANUAL, JobType.BACKUP_SCHEDULED]
ScanJob = Literal[JobType.SCAN_FULL, JobType.SCAN_QUICK]
UpdateJob = Literal[JobType.UPDATE_SERVER]
CheckJob = Literal[JobType.CHECK_ARCHIVES]


def backup_spec(server: Server) -> BackupSpec:
    """What the server's backups take; `InvalidOptions` for a server the inventory gives none."""
    if server.backup is None:
        raise InvalidOptions(f"{server.name} has no `backup` section in the inventory")
    return server.backup


def backup_id_of(job_id: UUID, backup_id: UUID | str | None) -> UUID:
    """A backup job's backup id: the caller's; a scheduled backup, which no caller asked for,
    takes its job id, so that its re-runs keep to one archive. The flow and the API's
    `data.backupId` both read it from here."""
    return UUID(str(backup_id)) if backup_id else job_id


class BackupOptions(BaseModel):
    """Options of a backup request, as the original API takes them."""

    model_config = ConfigDict(extra="forbid")

    backup_type: Literal["full"] = "full"
    #: True picks zstd (gzip when the server has no zstd); a name picks that codec.
    # Strict: JSON's true and false only, not "yes" or 1, as the API's schema says.
    compression: StrictBool | Literal["none", "gzip", "zstd"] = False
    #: True encrypts the archive to the server's recipients (tasks/encryption.py); False leaves
    #: the server's `backup.encrypt` to decide, it never turns encryption off.
    encryption: StrictBool = False

    @property
    def wanted_compression(self) -> Literal["none", "gzip", "zstd", "auto"]:
        if self.compression is True:
            return "auto"
        if self.compression is False:
            return "none"
        return self.compression


def backup_recipients(
    options: BackupOptions, spec: BackupSpec | None, settings: EncryptionSettings
) -> list[str]:
    """The age public keys this backup is encrypted to; empty: a plain archive.

    Encrypted when the request asks (`encryption: true`) or the server's `backup.encrypt`
    says so; to the server's `backup.recipients`, else MM_BACKUP_RECIPIENTS. Asked for with
    neither set, it is `InvalidOptions`: never a plain archive in place of an encrypted one.
    """
    if not (options.encryption or (spec is not None and spec.encrypt)):
        return []
    recipients = list(spec.recipients if spec is not None and spec.recipients else [])
    recipients = recipients or list(settings.recipients)
    if not recipients:
        raise InvalidOptions(
            "encryption asked for, but no recipient is configured: set MM_BACKUP_RECIPIENTS"
            " or the server's backup.recipients (age public keys, `age-keygen -y`)"
        )
    return recipients
