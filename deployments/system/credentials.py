"""The secrets a stack keeps under its data directory: Prefect's auth string and the JWT secret.

Each lives in a file of its own, mode 0600, made on first start and read on every later one, so
the Prefect UI's login and the API's tokens survive a restart. A secret given in the environment
wins over its file and is never written to disk by us. The data directory itself is made 0700:
it holds the SQLite database, the logs and the archives too.

    <data_dir>/prefect-auth   PREFECT_SERVER_API_AUTH_STRING / PREFECT_API_AUTH_STRING
    <data_dir>/jwt-secret     MM_JWT_SECRET
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
from pathlib import Path

#: File of Prefect's auth string, under the data directory.
PREFECT_AUTH_FILE = "prefect-auth"
#: File of the API shim's JWT secret, under the data directory.
JWT_SECRET_FILE = "jwt-secret"
#: The user name part of a generated auth string; Prefect compares the whole `user:password`.
PREFECT_AUTH_USER = "admin"
#: Bytes of randomness in a generated secret (43 characters of base64url).
SECRET_BYTES = 32


class CredentialsError(RuntimeError):
    """A secret file cannot be used: the message names the file and what is wrong."""


def private_dir(path: Path) -> Path:
    """`path`, made if missing, readable by its owner only (also when it existed before)."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    if stat.S_IMODE(path.stat().st_mode) & 0o077:
        path.chmod(0o700)
    return path


def keep_secret(path: Path, make: str) -> str:
    """The secret stored at `path`; stores `make` there first (0600, atomically) if missing.

    A file that others may read is refused rather than used: its secret may have leaked.
    """
    with contextlib.suppress(FileNotFoundError):
        return _read(path)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as file:
            file.write(make + "\n")
            file.flush()
            os.fsync(file.fileno())
        # link, not rename: of two first starts at once, the first one's secret is the one kept.
        with contextlib.suppress(FileExistsError):
            os.link(temp, path)
    finally:
        temp.unlink(missing_ok=True)
    return _read(path)


def _read(path: Path) -> str:
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise CredentialsError(
            f"{path} is readable by other users (mode {mode:04o}); its secret may have leaked:"
            f" make a new one (delete the file and restart) or `chmod 600 {path}`"
        )
    value = path.read_text().strip()
    if not value:
        raise CredentialsError(f"{path} is empty; delete it to have a new secret made")
    return value


def prefect_auth_string(data_dir: Path) -> str:
    """The stack's Prefect auth string (`user:password`), made on first start."""
    return keep_secret(
        data_dir / PREFECT_AUTH_FILE,
        f"{PREFECT_AUTH_USER}:{secrets.token_urlsafe(SECRET_BYTES)}",
    )


def jwt_secret(data_dir: Path) -> str:
    """The stack's JWT secret, made on first start."""
    return keep_secret(data_dir / JWT_SECRET_FILE, secrets.token_urlsafe(SECRET_BYTES))
