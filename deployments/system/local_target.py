"""A throwaway OpenSSH server on a loopback port, for the demo and the test suite.

It has its own host key and user key, accepts only that key, and is described by the known-hosts
line and inventory entry it writes, so the real SSH path (host-key check included) is exercised.
"""

from __future__ import annotations

import getpass
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from tasks.lifeline import tied_to_this_process

SSHD = shutil.which("sshd") or "/usr/sbin/sshd"


def free_port() -> int:
    """A loopback TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def keygen(path: Path) -> None:
    """Write a new unencrypted ed25519 key pair at `path` and `path.pub`."""
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "medicine-man-test", "-f", str(path)],
        check=True,
    )


@dataclass
class LocalTarget:
    """An sshd on 127.0.0.1 serving the current user, with keys under `home`."""

    home: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def user_key(self) -> Path:
        return self.home / "id_ed25519"

    @property
    def host_key(self) -> Path:
        return self.home / "ssh_host_ed25519_key"

    @property
    def known_hosts(self) -> Path:
        return self.home / "known_hosts"

    @property
    def username(self) -> str:
        return getpass.getuser()

    def known_hosts_line(self, port: int | None = None) -> str:
        """This server's host key as known_hosts lists it for 127.0.0.1:`port` (default: ours)."""
        host_pub = " ".join(self.host_key.with_suffix(".pub").read_text().split()[:2])
        return f"[127.0.0.1]:{port or self.port} {host_pub}\n"

    def prepare(self) -> None:
        """Keys, authorized_keys, known_hosts and sshd_config; idempotent."""
        self.home.mkdir(parents=True, exist_ok=True)
        os.chmod(self.home, 0o700)
        if not self.user_key.exists():
            keygen(self.user_key)
        if not self.host_key.exists():
            keygen(self.host_key)
        shutil.copyfile(self.user_key.with_suffix(".pub"), self.home / "authorized_keys")
        self.known_hosts.write_text(self.known_hosts_line())
        (self.home / "sshd_config").write_text(
            "\n".join(
                [
                    f"Port {self.port}",
                    "ListenAddress 127.0.0.1",
                    f"HostKey {self.host_key}",
                    f"PidFile {self.home / 'sshd.pid'}",
                    f"AuthorizedKeysFile {self.home / 'authorized_keys'}",
                    "StrictModes no",
                    "UsePAM no",
                    "PasswordAuthentication no",
                    "KbdInteractiveAuthentication no",
                    "PubkeyAuthentication yes",
                    "PermitRootLogin prohibit-password",
                    "MaxStartups 200:30:400",
                    "MaxSessions 100",
                    "LogLevel ERROR",
                    "",
                ]
            )
        )

    def start(self) -> LocalTarget:
        """Start sshd (preparing first) and wait until it sends its banner."""
        if not Path(SSHD).exists():
            raise RuntimeError(f"{SSHD} not found: install openssh-server")
        self.prepare()
        Path("/run/sshd").mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            [SSHD, "-D", "-e", "-f", str(self.home / "sshd_config")],
            stdout=subprocess.DEVNULL,
            stderr=open(self.home / "sshd.log", "ab"),
            start_new_session=True,
            # The demo's server dies with `make demo`, SIGKILL included.
            preexec_fn=tied_to_this_process(),
        )
        self.wait_ready()
        return self

    def wait_ready(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"sshd exited: {(self.home / 'sshd.log').read_text()[-2000:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                    if sock.recv(64).startswith(b"SSH-"):
                        return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"sshd on port {self.port} did not answer within {timeout} s")

    def kill(self) -> None:
        """kill -9 the listener and every session it serves, as a crash would."""
        if self.process is None:
            return
        for pid in [*descendants(self.process.pid), self.process.pid]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.process.wait()
        self.process = None

    def stop(self) -> None:
        if self.process is None:
            return
        self.process.terminate()
        try:
            self.process.wait(5)
        except subprocess.TimeoutExpired:
            self.kill()
        self.process = None

    def server_entry(self, server_id: str, name: str, **extra: object) -> dict[str, object]:
        """An inventory entry for this target."""
        return {
            "id": server_id,
            "name": name,
            "host": "127.0.0.1",
            "port": self.port,
            "username": self.username,
            "private_key_file": str(self.user_key),
            "known_hosts_file": str(self.known_hosts),
            **extra,
        }


def descendants(root: int) -> list[int]:
    """Pids below `root`, deepest first; sshd's session children setsid(), so no group kill."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    found: list[int] = []
    stack = [root]
    while stack:
        for child in children.get(stack.pop(), []):
            found.append(child)
            stack.append(child)
    return found[::-1]
