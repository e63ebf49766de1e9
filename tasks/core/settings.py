"""The MM_* settings, by section: each section a class, read once per process by its getter."""

from __future__ import annotations

import secrets
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, PrivateAttr, SecretStr, model_validator
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


class InsecureSettings(RuntimeError):
    """MM_JWT_SECRET is not set; set it (or MM_API_DEV=1 for a throwaway one in development)."""

    def __init__(self) -> None:
        super().__init__((self.__doc__ or "").strip())


#: Bytes an HS256 key needs at least: the hash's output size (RFC 7518, section 3.2).
MIN_SECRET_BYTES = 32


class WeakSecret(RuntimeError):
    """MM_JWT_SECRET is too short to sign tokens safely."""

    def __init__(self, length: int) -> None:
        super().__init__(
            f"MM_JWT_SECRET is {length} bytes long; HS256 needs at least {MIN_SECRET_BYTES} "
            "(e.g. `openssl rand -base64 48`)"
        )


class ApiSettings(BaseSettings):
    """How the shim authenticates callers and where it finds the inventory."""

    model_config = SettingsConfigDict(env_prefix="MM_", extra="ignore")

    jwt_secret: SecretStr | None = Field(None, description="HS256 key of the callers' tokens.")
    api_dev: bool = Field(False, description="Development mode: a generated secret if none.")
    #: When set, tokens must carry this `iss` claim (and `mint_token` is given it).
    jwt_issuer: str | None = Field(None, min_length=1)
    #: When set, tokens must carry this `aud` claim.
    jwt_audience: str | None = Field(None, min_length=1)
    inventory: Path = Field(Path("inventory.yaml"), description="Server inventory (YAML).")
    #: Seconds one Prefect call may take before the orchestrator counts as unavailable;
    #: bounds the Prefect client's own retries, so a dead server answers 503 promptly.
    prefect_timeout: float = Field(10.0, gt=0)
    #: Seconds between two looks at a job in a Server-Sent Events stream.
    events_poll: float = Field(0.5, gt=0)
    #: Bytes a request body may have; a larger one is refused with 413 before it is parsed.
    max_body_bytes: int = Field(1024 * 1024, ge=1024)

    #: True when the secret was generated here (dev mode): tokens die with the process. Private,
    #: so that no MM_GENERATED_SECRET in the environment can make the shim log a token.
    _generated_secret: bool = PrivateAttr(False)

    @model_validator(mode="after")
    def _secret_or_dev(self) -> ApiSettings:
        if self.jwt_secret is None or not self.jwt_secret.get_secret_value():
            if not self.api_dev:
                raise InsecureSettings()
            self.jwt_secret = SecretStr(secrets.token_urlsafe(MIN_SECRET_BYTES))
            self._generated_secret = True
        # Dev mode too: a short secret given is a mistake worth hearing about at once.
        length = len(self.jwt_secret.get_secret_value().encode())
        if length < MIN_SECRET_BYTES:
            raise WeakSecret(length)
        return self

    @property
    def generated_secret(self) -> bool:
        return self._generated_secret

    @property
    def secret(self) -> str:
        assert self.jwt_secret is not None  # the validator guarantees it
        return self.jwt_secret.get_secret_value()


@lru_cache
def get_api_settings() -> ApiSettings:
    """The settings of this process, read once from the environment."""
    return ApiSettings()
