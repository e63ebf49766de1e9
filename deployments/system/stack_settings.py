"""Settings of `make up` itself (deployments.system.up, deployments.system.stack): MM_API_PORT,
MM_STOP_GRACE, MM_WORKER_TYPE. What the processes it starts read (the inventory, the
repositories, ...) stays in their own settings; the stack only passes those on, or fills in its
data directory's defaults.
"""

from __future__ import annotations

from functools import lru_cache

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class StackSettings(BaseSettings):
    """Where the shim listens, how long a stop waits, and which worker runs the jobs."""

    model_config = SettingsConfigDict(env_prefix="MM_", extra="ignore")

    api_port: int = Field(3000, ge=1, le=65535, description="Port of the API shim.")
    stop_grace: float = Field(
        15.0, ge=0, description="Seconds running jobs get to finish on Ctrl-C before handed back."
    )
    worker_type: str = Field(
        "forkserver",
        description="`forkserver` (deployments/worker/forkserver.py) or Prefect's stock `process`.",
    )


@lru_cache
def get_stack_settings() -> StackSettings:
    """The settings of this process, read once from the environment."""
    return StackSettings()
