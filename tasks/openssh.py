"""The OpenSSH transport: a remote program's output into a file through the system `ssh`.

`OpenSSHDownloader`, the `tasks.remote.Downloader` behind `tasks.ssh.SSHSession.download`'s
fast path (BENCHMARKS.md): `ssh` decrypts and writes the archive file itself, and we hash it
behind it from the page cache (`HashingWriter.catch_up`), so no byte of the stream passes
through Python's GIL. It keeps every property of the paramiko path:

- the host key is checked against the server's known-hosts file and nothing else
  (`StrictHostKeyChecking=yes`, no global file, never updated, no SSHFP records);
- only the inventory's key authenticates: no agent, no other identity, no password, no prompt;
- no user or system ssh config (`-F /dev/null`): no ProxyCommand, forwarding or multiplexing;
- the remote command is the same quoted argument list (`tasks.remote.quoted`), after `--`
  and the host;
- a hung server fails with `SSHTimeout` after the idle timeout, as a paramiko read would;
- ssh's own failures (exit status 255) become the errors of `tasks.core.errors` through
  `tasks.remote.connection_error`, as paramiko's do (`_failure` reads ssh's message).

`unusable` says when it cannot keep them (no `ssh`, a key file ssh would refuse for its mode,
a path ssh's option parser would read differently); the caller then uses paramiko.
"""

from __future__ import annotations

import math
import os
import shutil
import stat
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO

from tasks.atomic import ArchiveSink
from tasks.core.errors import JobError, SSHTimeout
from tasks.core.inventory import Server
from tasks.core.settings import SSHSettings
from tasks.lifeline import tied_to_this_process
from tasks.remote import (
    CommandResult,
    Failure,
    OnProgress,
    connection_error,
    keep_tail,
    quoted,
    repository_full,
)

#: The order paramiko prefers too (tasks.ssh.FAST_CIPHERS first), then OpenSSH's other ciphers.
CIPHERS = (
    "aes128-gcm@openssh.com,aes256-gcm@openssh.com,chacha20-poly1305@openssh.com,"
    "aes128-ctr,aes192-ctr,aes256-ctr"
)
#: ssh's exit status for its own errors (anything else is the remote command's).
SSH_FAILED = 255
#: Seconds between looks at the file when the hash has caught up with ssh.
POLL = 0.005
#: Less free space than this where the archive is written, and an ssh that failed mid-stream
#: failed for want of room (ssh writes up to 64 KiB at a time).
FULL_BELOW = 1 << 20


def client() -> str | None:
    """The system `ssh` binary, if there is one."""
    return shutil.which("ssh")


def unusable(server: Server) -> str | None:
    """Why the OpenSSH path cannot keep the paramiko path's behaviour, or None if it can."""
    if client() is None:
        return "no ssh client on PATH"
    for path in (server.private_key_file, server.known_hosts_file):
        if (
            not path.is_absolute()
            or any(c in str(path) for c in '"\\')
            or not str(path).isprintable()
        ):
            return f"{path} is not a path ssh's option parser reads as it is"
    try:
        mode = server.private_key_file.stat()
    except OSError:
        return None  # ssh fails the same way paramiko would: a missing key, an SSHAuthError
    permissions = stat.S_IMODE(mode.st_mode)
    if mode.st_uid == os.getuid() and permissions & 0o077:
        return f"ssh refuses {server.private_key_file}: mode {permissions:o} lets others read it"
    return None


def argv(server: Server, settings: SSHSettings, command: str) -> list[str]:
    """The ssh command line that runs `command` (already quoted) on `server`."""
    options = {
        "BatchMode": "yes",
        "StrictHostKeyChecking": "yes",
        "UserKnownHostsFile": _quoted(server.known_hosts_file),
        "GlobalKnownHostsFile": "/dev/null",
        "UpdateHostKeys": "no",
        "CheckHostIP": "no",
        "VerifyHostKeyDNS": "no",
        "IdentityFile": _quoted(server.private_key_file),
        "IdentitiesOnly": "yes",
        "IdentityAgent": "none",
        "PubkeyAuthentication": "yes",
        "PasswordAuthentication": "no",
        "KbdInteractiveAuthentication": "no",
        "HostbasedAuthentication": "no",
        "GSSAPIAuthentication": "no",
        "ControlMaster": "no",
        "ControlPath": "none",
        "ClearAllForwardings": "yes",
        "ForwardAgent": "no",
        "ForwardX11": "no",
        "PermitLocalCommand": "no",
        "Ciphers": CIPHERS,
        "Compression": "no",
        "ConnectTimeout": str(math.ceil(settings.connect_timeout)),
        "LogLevel": "ERROR",
    }
    args = [client() or "ssh", "-F", "/dev/null", "-T"]
    for name, value in options.items():
        args += ["-o", f"{name}={value}"]
    return [*args, "-p", str(server.port), "-l", server.username, "--", server.host, command]


class OpenSSHDownloader:
    """Downloads from one server through the system `ssh`, one process (connection) each."""

    def __init__(self, server: Server, settings: SSHSettings) -> None:
        self.server = server
        self._settings = settings

    def download(
        self, argv: Sequence[str], archive: ArchiveSink, *, on_progress: OnProgress | None = None
    ) -> CommandResult:
        """`tasks.remote.Downloader.download`: `argv` quoted here, stderr's tail kept."""
        status, stderr = download(
            self.server, self._settings, quoted(argv), archive, on_progress=on_progress
        )
        return CommandResult(status, b"", stderr)


def download(
    server: Server,
    settings: SSHSettings,
    command: str,
    archive: ArchiveSink,
    on_progress: Callable[[int], object] | None = None,
) -> tuple[int, bytes]:
    """Run `command` on `server` with its stdout going into `archive`'s file.

    Returns the remote exit status and the tail of stderr; `archive` has counted and hashed
    every byte by then. Raises the `tasks.core.errors` of a failed connection, or `SSHTimeout` when
    nothing arrived for `idle_timeout` seconds (ssh is killed first).
    """
    stderr = bytearray()
    process = subprocess.Popen(
        argv(server, settings, command),
        stdin=subprocess.DEVNULL,
        stdout=archive.fileno(),
        stderr=subprocess.PIPE,
        # Its stdout is the archive file, not a pipe: a run that dies would leave it writing.
        preexec_fn=tied_to_this_process(),
    )
    assert process.stderr is not None
    reader = threading.Thread(target=_keep_stderr, args=(process.stderr, stderr), daemon=True)
    reader.start()
    try:
        last_data = time.monotonic()
        while True:
            exited = process.poll() is not None
            if archive.catch_up():
                last_data = time.monotonic()
                if on_progress is not None:
                    on_progress(archive.size)
            elif exited:
                break
            elif time.monotonic() - last_data > settings.idle_timeout:
                raise SSHTimeout(
                    f"{server.name}: no data from the server for {settings.idle_timeout:.0f} s"
                )
            else:
                time.sleep(POLL)
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()
        reader.join(timeout=10)
    if process.returncode == SSH_FAILED:
        if archive.size > 0 and _disk_full(archive.storage_fd()):
            # ssh says nothing when it cannot write our file: it just exits 255.
            raise repository_full(archive.size)
        raise _failure(server, bytes(stderr), received=archive.size > 0)
    return process.returncode, bytes(stderr)


def _disk_full(fd: int) -> bool:
    """Whether the filesystem of `fd` has less room than one more write of ssh's."""
    stat = os.fstatvfs(fd)
    # root may write into the blocks reserved for it: those count for root only.
    blocks = stat.f_bfree if os.geteuid() == 0 else stat.f_bavail
    return blocks * stat.f_frsize < FULL_BELOW


def _keep_stderr(pipe: IO[bytes], tail: bytearray) -> None:
    with pipe:
        while chunk := os.read(pipe.fileno(), 65536):
            keep_tail(tail, chunk)


def _failure(server: Server, stderr: bytes, *, received: bool) -> JobError:
    """The error of an ssh that exited 255: its message read for the `Failure` it names."""
    text = stderr.decode("utf-8", "replace")
    lines = [line.strip() for line in text.splitlines() if line.strip() and "@@@" not in line]
    last = lines[-1] if lines else "ssh exited with status 255"
    if received:
        # Keys and logins are settled before the first byte: this is a connection that broke.
        return connection_error(server, Failure.LINK, last, connected=True)
    if "REMOTE HOST IDENTIFICATION HAS CHANGED" in text or "has changed and you have" in text:
        changed = next((line for line in lines if line.startswith("Host key for")), last)
        return connection_error(server, Failure.HOST_KEY_CHANGED, changed, connected=False)
    if "Host key verification failed" in text:
        return connection_error(server, Failure.HOST_KEY_UNKNOWN, "", connected=False)
    # ssh's own words ("user@host: Permission denied (publickey)."), not a remote tar's.
    if "Permission denied (" in text or "Too many authentication failures" in text:
        return connection_error(server, Failure.AUTH_REFUSED, last, connected=False)
    if "timed out" in text:
        return connection_error(server, Failure.TIMED_OUT, last, connected=False)
    return connection_error(server, Failure.LINK, last, connected=False)


def _quoted(path: Path) -> str:
    """A path as ssh's option parser reads it back: in quotes, `%` not taken as a token."""
    return '"' + str(path).replace("%", "%%") + '"'
