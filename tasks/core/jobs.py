"""The parameters of each flow: what a job asks for, and the one run tag a job sets itself.
Plain pydantic, no Prefect, no SSH."""

from __future__ import annotations

from enum import StrEnum
from typing import Literal

from pydantic import BaseModel, ConfigDict, field_validator


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


class BackupOptions(BaseModel):
    """Options of a backup request, as the original API takes them."""

    model_config = ConfigDict(extra="forbid")

    backup_type: Literal["full"] = "full"
    #: True picks zstd (gzip when the server has no zstd); a name picks that codec.
    compression: bool | Literal["none", "gzip", "zstd"] = False
    encryption: bool = False

    @field_validator("encryption")
    @classmethod
    def _no_encryption_yet(cls, value: bool) -> bool:
        if value:
            raise ValueError(
                "encryption is not supported yet; keep the backup repository on an encrypted disk"
            )
        return value

    @property
    def wanted_compression(self) -> Literal["none", "gzip", "zstd", "auto"]:
        if self.compression is True:
            return "auto"
        if self.compression is False:
            return "none"
        return self.compression
