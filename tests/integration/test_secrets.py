"""Secrets reach only the processes that need them, during a whole backup and after it.

What it does: a backup whose pre and post hooks carry a token, enqueued through the API; while
it runs, the command lines and environments of every process below the workers (the workers,
their fork servers and the runs, with their ssh and tar children) and of the Prefect server
are read again and again; afterwards every log file, the flow run's parameters and its logs.
What must hold: the JWT secret is in the shim's environment only; the hook token in none of
the stack's processes, logs, parameters or flow-run logs (it is needed on the server only);
the database password (scaled mode) in the server side's environment only; Prefect's auth
string in every client's environment (they need it) and in no command line.
"""

from __future__ import annotations

import secrets
import threading
import uuid
from pathlib import Path
from urllib.parse import urlsplit

from deployments.system.local_target import LocalTarget, descendants
from deployments.system.stack import Child, Stack
from tests.integration.conftest import InventoryFile
from tests.support.api import Api, ok


class ProcessReader:
    """Reads /proc/<pid>/{cmdline,environ} of a set of processes until stopped."""

    def __init__(self, roots: dict[str, Child]) -> None:
        self.roots = roots
        #: (role, pid) -> what was seen in its command line and environment.
        self.cmdlines: dict[tuple[str, int], str] = {}
        self.environs: dict[tuple[str, int], str] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> ProcessReader:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.read_once()
            self._stop.wait(0.05)

    def read_once(self) -> None:
        for role, child in self.roots.items():
            if child.pid is None:
                continue
            for pid in (child.pid, *descendants(child.pid)):
                for name, seen in (("cmdline", self.cmdlines), ("environ", self.environs)):
                    try:
                        text = Path(f"/proc/{pid}/{name}").read_bytes().replace(b"\0", b"\n")
                    except OSError:
                        continue
                    key = (role, pid)
                    seen[key] = seen.get(key, "") + text.decode(errors="replace")

    def holders(self, secret: str, seen: dict[tuple[str, int], str]) -> set[str]:
        return {role for (role, _), text in seen.items() if secret in text}


def test_secrets_stay_where_they_are_needed(
    stack: Stack, target: LocalTarget, inventory: InventoryFile, tmp_path: Path
) -> None:
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "data.bin").write_bytes(secrets.token_bytes(4 << 20))
    hook_token = f"hook-token-{secrets.token_hex(16)}"
    server_id = inventory.add_server(
        target,
        backup={
            "paths": [str(tree)],
            # `true` ignores its arguments: the token only travels.
            "pre": f"true {hook_token}",
            "post": f"true {hook_token}",
        },
    )
    roots = {f"worker:{child.name}": child for child in stack.worker_processes()}
    roots.update({f"server:{c.name}": c for c in stack.servers if c is not None})
    assert stack.shim is not None
    roots["shim"] = stack.shim
    assert stack.shim_url and stack.jwt_secret and stack.auth_string
    with (
        Api(stack.shim_url, stack.jwt_secret, "secrets-admin", "admin") as admin,
        ProcessReader(roots) as reader,
    ):
        job_id = ok(admin.post(f"/api/servers/{server_id}/backup", json={}), 202)["jobId"]
        job = admin.wait_for_state(job_id, "completed", "failed", timeout=180)
    assert job["state"] == "completed", job

    with stack.sync_client() as client:
        run = client.read_flow_run(uuid.UUID(job_id))
        run_logs = "\n".join(entry.message for entry in client.read_logs())
    log_files = "\n".join(p.read_text(errors="replace") for p in stack.logs_dir.rglob("*.log"))
    # The reader saw the runs themselves, not only the long-lived processes.
    assert any("prefect" in text for (role, _), text in reader.cmdlines.items() if "worker" in role)
    assert len(reader.cmdlines) > len(roots)

    # The JWT secret: the shim's environment, nowhere else.
    assert reader.holders(stack.jwt_secret, reader.environs) == {"shim"}
    assert not reader.holders(stack.jwt_secret, reader.cmdlines)
    assert stack.jwt_secret not in log_files

    # The hook token: on the server (through SSH) only, never in the stack's own traces.
    assert not reader.holders(hook_token, reader.environs)
    assert not reader.holders(hook_token, reader.cmdlines)
    assert hook_token not in log_files
    assert hook_token not in run_logs
    assert hook_token not in repr(run.parameters)
    assert hook_token not in (run.state.message or "" if run.state else "")

    # Prefect's auth string: every client needs it, in its environment; no command line has it.
    holders = reader.holders(stack.auth_string, reader.environs)
    assert {role for role in roots if role.startswith("worker:")} <= holders
    assert "shim" in holders
    assert not reader.holders(stack.auth_string, reader.cmdlines)
    assert stack.auth_string not in log_files

    # The database password (scaled mode): the server side's environment only.
    assert stack.backend is not None
    password = urlsplit(stack.backend.database_url or "").password
    if password:
        assert reader.holders(password, reader.environs) <= {r for r in roots if "server" in r}
        assert not reader.holders(password, reader.cmdlines)
