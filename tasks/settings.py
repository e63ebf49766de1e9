"""Settings of the processes that do the work (flow runs and the CLI)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class WorkSettings(BaseSettings):
    """Where the inventory and repositories are, and how patient SSH is."""

    model_config = SettingsConfigDict(env_prefix="MM_", extra="ignore")

    inventory: Path = Field(Path("inventory.yaml"), description="Server inventory (YAML).")
    backup_root: Path = Field(Path("var/backups"), description="The backup repository.")
    backup_roots: str = Field(
        "",
        description="More backup repositories to search for a backup (one per worker host when"
        " each keeps its own), separated by ':'; `backup_root` is searched first.",
    )
    results_root: Path = Field(Path("var/results"), description="Scan results and update logs.")
    ssh_connect_timeout: float = Field(10.0, gt=0, description="Seconds to connect and log in.")
    ssh_idle_timeout: float = Field(
        120.0, gt=0, description="Seconds without a byte from the server before it counts as hung."
    )
    ssh_client: Literal["auto", "paramiko"] = Field(
        "auto",
        description="How archives are downloaded: `auto` uses the system OpenSSH client when it"
        " can keep paramiko's checks (tasks/openssh.py), else paramiko; `paramiko` always.",
    )

    def search_roots(self) -> list[Path]:
        """`backup_root`, then each of `backup_roots`, without repeats."""
        roots = [self.backup_root, *(Path(p) for p in self.backup_roots.split(":") if p)]
        return list(dict.fromkeys(roots))


@lru_cache
def get_settings() -> WorkSettings:
    """The settings of this process, read once from the environment."""
    return WorkSettings()
