"""The whole system on one machine: Prefect server, bootstrap, a worker for each pool, the API shim.

One implementation for `make up`, `make demo` and the integration tests. Every child runs in its
own process group with its log under `<data_dir>/logs`; `stop()` ends them in reverse order,
flow-run processes included (they run in sessions of their own, so a group signal misses them).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import BinaryIO

import httpx
from prefect.client.orchestration import PrefectClient, SyncPrefectClient
from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL, temporary_settings
from prefect.workers.process import ProcessWorker

from deployments.control.automations import crash_orphaned_runs, refind_crashed_runs
from deployments.control.bootstrap import PROJECT_DIR, ensure_pool
from deployments.control.queues import QUEUES, get_queue
from deployments.system import credentials
from deployments.system.backends import prefect_env
from deployments.system.local_target import descendants
from deployments.system.lock import record_children
from deployments.worker.forkserver import DRAIN_SIGNAL, ForkServerWorker
from deployments.worker.serve import PoolWorker, argv_of
from tasks.core.settings import BackendSettings, Settings, SettingsError, get_settings
from tasks.lifeline import tied_to_this_process
from tasks.server_slot import release_orphaned_slots

#: Seconds the Prefect server side gets after the workers, at least, to take their last reports.
SERVER_GRACE = 5.0
#: Seconds between telling the workers to take no more runs and looking for their runs: a poll
#: already answered may still start the run it fetched, and that run must be seen and stopped.
DRAIN_SETTLE = 0.5
#: Seconds the workers get, once their runs are gone, to report them Crashed, hurried or not:
#: a run left Running waits out its queue's lock duration for the stalled-run automation.
REPORT_GRACE = 5.0
#: Prefect states of a run that a worker still has to report an end of.
_IN_FLIGHT = ["PENDING", "RUNNING", "CANCELLING"]
#: Inherited variables that would point the stack at another Prefect (a Cloud profile, say).
#: Worker types the stack can start: ours, and Prefect's stock one as the fallback.
FORKSERVER = ForkServerWorker.type
WORKER_TYPES = (FORKSERVER, ProcessWorker.type)
#: Seconds between a worker's polls for runs. The stock worker: pickup in 0.6 s instead of 4 s
#: for ~13 % of a core on an idle server (docs/DESIGN.md, "The fork-server worker", Polling).
#: Ours is woken by the pool's events, so its poll is only the safety net.
POLL_SECONDS = {FORKSERVER: 5, ProcessWorker.type: 1}
#: The module that serves a host's pools with fork-server workers in one process.
SERVE = "deployments.worker.serve"

_FOREIGN = ("PREFECT_API_URL", "PREFECT_API_KEY", "PREFECT_PROFILE", "PREFECT_PROFILES_PATH")
#: Inherited secrets that only some children may have: each is set again for those that need it
#: (the server side, the shim), never passed on to workers and flow runs by inheritance.
#: MM_BACKUP_IDENTITY is set again for none: the CLI decrypts, a worker only encrypts.
_SECRETS = (
    "MM_JWT_SECRET",
    "MM_BACKUP_IDENTITY",
    "MM_DATABASE_URL",
    "MM_REDIS_URL",
    "PREFECT_API_AUTH_STRING",
    "PREFECT_SERVER_API_AUTH_STRING",
    "PREFECT_API_DATABASE_CONNECTION_URL",
    "PREFECT_API_DATABASE_PASSWORD",
    "PREFECT_REDIS_MESSAGING_PASSWORD",
    "PREFECT_SERVER_DOCKET_URL",
)
#: Files and folders the children make are their user's alone: logs, the SQLite database,
#: archives and results may all hold what a server keeps private.
CHILD_UMASK = 0o077


class StackError(RuntimeError):
    """A part of the stack did not start; the message ends with the tail of its log."""


def _settings() -> Settings:
    """This process's MM_* settings (`get_settings`); a bad value is a StackError naming it."""
    try:
        return get_settings()
    except SettingsError as exc:
        raise StackError(f"invalid MM_* setting: {exc}") from None


@dataclass
class Child:
    """One child process in its own process group, logging to a file."""

    name: str
    argv: list[str]
    log_path: Path
    popen: subprocess.Popen[bytes] | None = None
    #: A fork-server worker, which takes no more runs after `DRAIN_SIGNAL`.
    drains: bool = False
    #: A worker process: the pools it serves, and its worker host.
    pools: tuple[str, ...] = ()
    host: int = 0
    #: When `start` was last called (UTC).
    started_at: datetime = field(default_factory=lambda: datetime.now(UTC))

    def start(self, env: dict[str, str], cwd: Path) -> None:
        self.started_at = datetime.now(UTC)
        with _open_log(self.log_path) as log:
            self.popen = subprocess.Popen(
                self.argv,
                env=env,
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                umask=CHILD_UMASK,
                # It dies with this process, SIGKILL included.
                preexec_fn=tied_to_this_process(),
            )

    @property
    def pid(self) -> int | None:
        return self.popen.pid if self.popen is not None else None

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def stop(self, timeout: float) -> None:
        """SIGTERM its descendants' groups, then its own group; SIGKILL what outlives `timeout`."""
        if self.popen is None:
            return
        if self.popen.poll() is None:
            # Flow runs first, while the worker still lives to report them: a run killed after
            # its worker stays Running forever and holds a pool slot.
            deadline = time.monotonic() + timeout
            _terminate_groups(self.flow_run_groups(), lambda: deadline)
            _signal_group(self.popen.pid, signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                _signal_group(self.popen.pid, signal.SIGKILL)
                self.popen.wait()
        self.popen = None

    def flow_run_groups(self) -> list[int]:
        """Sessions among its descendants: a worker's flow runs, each in its own session.

        Not a fork server, which leads only a group of its own: it dies with its worker, and
        a signal of its own would kill the runs it serves at once (deployments/worker/lifeline.py).
        """
        if not self.alive():
            return []
        assert self.popen is not None
        return [p for p in descendants(self.popen.pid) if _leads_session(p)]

    def reap(self) -> None:
        """Collect its exit status once its group has ended (or been killed)."""
        if self.popen is not None:
            self.popen.wait()
            self.popen = None

    def kill(self) -> None:
        """kill -9 its group and nothing else, as a crash of this process would."""
        if self.popen is None:
            return
        _signal_group(self.popen.pid, signal.SIGKILL)
        self.popen.wait()
        self.popen = None


@dataclass
class Stack:
    """Prefect server + bootstrap + workers (+ API shim) under `data_dir`.

    Args:
        data_dir: PREFECT_HOME (with the SQLite database), logs, and default repositories.
        port: the Prefect API and UI port on 127.0.0.1.
        inventory: MM_INVENTORY for bootstrap and flow runs; read at run time by the flows.
            Default: MM_INVENTORY from the environment, else the children's own default.
        backup_root, results_root: MM_BACKUP_ROOT and MM_RESULTS_ROOT of every child; default:
            those from the environment, else `<data_dir>/backups` and `<data_dir>/results`.
            Relative paths are taken from the current directory, as the CLI takes them.
        api_port: port of the API shim; None never starts it. It starts only if
            api_shim/app.py exists. Default: MM_API_PORT, else 3000.
        ui: serve the Prefect UI (tests save a little startup without it).
        extra_env: more variables for every child, e.g. PREFECT_* tuning in a test.
        jwt_secret: the shim's MM_JWT_SECRET; default: MM_JWT_SECRET from the environment, or
            the one kept in `<data_dir>/jwt-secret`, made on first start
            (`deployments.system.credentials`; tokens are minted with `api_shim.auth.mint_token`).
        auth_string: Prefect's API auth string (`user:password`), required by the server of
            every call but its health check; default: PREFECT_API_AUTH_STRING from the
            environment, or in embedded mode the one kept in `<data_dir>/prefect-auth`, made on
            first start. Scaled mode refuses to start without one given: every host needs it.
        backend: embedded (SQLite) or scaled (PostgreSQL + Redis); default: from MM_DATABASE_URL
            and MM_REDIS_URL (`deployments.system.backends`).
        server_ports: scaled mode only: run one Prefect API process (`--no-services`) per port,
            plus the background services in a process of their own; `port` is then the one
            address clients use, served by something in front of them (a load balancer).
        hosts: worker hosts; each runs a worker for each pool (fork-server workers all in one
            process) with its own HOME and PREFECT_HOME, as if on a machine of its own. All of
            them share `backup_root`.
        worker_type: `forkserver` (runs forked from a pre-imported process,
            deployments/worker/forkserver.py) or Prefect's stock `process`; default: MM_WORKER_TYPE,
            else `forkserver`.
        stop_grace: seconds `stop()` lets jobs run after SIGTERM before it kills them (hands
            them back); default: MM_STOP_GRACE, else 15.
    """

    data_dir: Path
    port: int = 4200
    inventory: Path | None = None
    project_dir: Path = PROJECT_DIR
    backup_root: Path | None = None
    results_root: Path | None = None
    api_port: int | None = field(default_factory=lambda: _settings().stack.api_port)
    ui: bool = True
    extra_env: dict[str, str] = field(default_factory=dict)
    jwt_secret: str | None = None
    auth_string: str | None = None
    stop_grace: float = field(default_factory=lambda: _settings().stack.stop_grace)
    backend: BackendSettings | None = None
    server_ports: list[int] = field(default_factory=list)
    hosts: int = 1
    worker_type: str = field(default_factory=lambda: _settings().stack.worker_type)
    server: Child | None = None
    #: Every Prefect API process (`server` is the first); one unless `server_ports` says more.
    servers: list[Child] = field(default_factory=list)
    #: Prefect's background services, when they run apart from the API processes.
    services: Child | None = None
    workers: dict[str, Child] = field(default_factory=dict)
    shim: Child | None = None
    #: Seconds each startup phase took, by phase name.
    timings: dict[str, float] = field(default_factory=dict)
    #: This process's MM_* settings, which the defaults above and below come from.
    settings: Settings = field(init=False, repr=False)
    #: When a stop in progress kills what still runs (`stop`, `hurry`).
    _deadline: float = field(default=0.0, init=False, repr=False)
    _hurried: bool = field(default=False, init=False, repr=False)
    #: When the Prefect server was last started (wall clock, as Prefect's state timestamps).
    _server_started: datetime | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self.data_dir = self.data_dir.resolve()
        self.project_dir = self.project_dir.resolve()
        self.settings = _settings()
        # What the environment sets means the same here as for the workers and the CLI; only
        # what it leaves unset falls back to the data directory.
        paths = self.settings.paths
        given = paths.model_fields_set
        if self.inventory is None and "inventory" in given:
            self.inventory = paths.inventory
        if self.backup_root is None and "backup_root" in given:
            self.backup_root = paths.backup_root
        if self.results_root is None and "results_root" in given:
            self.results_root = paths.results_root
        self.backup_root = (self.backup_root or self.data_dir / "backups").resolve()
        self.results_root = (self.results_root or self.data_dir / "results").resolve()
        if self.inventory is not None:
            self.inventory = self.inventory.resolve()
        if self.backend is None:
            self.backend = self.settings.backend
        try:
            self._find_secrets()
        except credentials.CredentialsError as exc:
            raise StackError(str(exc)) from None
        if self.server_ports and not self.backend.scaled:
            raise StackError("several Prefect API processes need scaled mode (PostgreSQL + Redis)")
        if self.hosts < 1:
            raise StackError(f"hosts must be at least 1, not {self.hosts}")
        if self.worker_type not in WORKER_TYPES:
            allowed = ", ".join(WORKER_TYPES)
            raise StackError(f"unknown worker type {self.worker_type!r}; use one of {allowed}")

    def _find_secrets(self) -> None:
        assert self.backend is not None
        if self.auth_string is None:
            self.auth_string = os.environ.get("PREFECT_API_AUTH_STRING") or None
        if self.auth_string is None:
            if self.backend.scaled:
                raise StackError(
                    "scaled mode needs Prefect's auth string, the same on every host: set"
                    " PREFECT_API_AUTH_STRING=user:password (docs/DEPLOYMENT.md)"
                )
            self.auth_string = credentials.prefect_auth_string(self.data_dir)
        if self.jwt_secret is None:
            given = self.settings.api.jwt_secret
            self.jwt_secret = (given.get_secret_value() if given else "") or credentials.jwt_secret(
                self.data_dir
            )

    # -- where things are -------------------------------------------------------------------

    @property
    def url(self) -> str:
        """The Prefect UI."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def api_url(self) -> str:
        return f"{self.url}/api"

    @property
    def logs_dir(self) -> Path:
        return self.data_dir / "logs"

    @property
    def prefect_home(self) -> Path:
        return self.data_dir / "prefect"

    @property
    def shim_url(self) -> str | None:
        return f"http://127.0.0.1:{self.api_port}" if self.shim is not None else None

    def environment(self) -> dict[str, str]:
        """The environment of every child process: a client of the Prefect API, no secret but
        the auth string that every client needs. The server side and the shim get more
        (`server_environment`, `start_shim`)."""
        env = {k: v for k, v in os.environ.items() if k not in _FOREIGN and k not in _SECRETS}
        env.update(
            {
                "PREFECT_HOME": str(self.prefect_home),
                "PREFECT_API_URL": self.api_url,
                "PREFECT_API_AUTH_STRING": self.auth_string or "",
                "PREFECT_UI_URL": self.url,
                "PREFECT_UI_ENABLED": "true" if self.ui else "false",
                # No internet here, and no one to report to.
                "DO_NOT_TRACK": "1",
                "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                # A run's process takes 3-5 s to start; a longer look-ahead starts delayed jobs
                # early, a shorter one starts them late.
                "PREFECT_WORKER_PREFETCH_SECONDS": "5",
                "PREFECT_SERVER_LOGGING_LEVEL": "WARNING",
                "PYTHONUNBUFFERED": "1",
                "MM_BACKUP_ROOT": str(self.backup_root),
                "MM_RESULTS_ROOT": str(self.results_root),
            }
        )
        if self.inventory is not None:
            env["MM_INVENTORY"] = str(self.inventory)
        if self.api_port is not None:
            env["MM_API_PORT"] = str(self.api_port)
        env.update(self.extra_env)
        # Our maintenance flow deletes old job records (tasks/job_records.py: Prefect's vacuum
        # has no "keep the last N"); Prefect's vacuum then deletes what they leave behind (their
        # logs and artifacts, "orphans", daily) and events older than their retention (7 days).
        env.setdefault("PREFECT_SERVER_SERVICES_DB_VACUUM_ENABLED", "events,orphans")
        # Every client (worker, each flow run) would ask the server for its version first: one
        # request per run, to a server of the same install.
        env.setdefault("PREFECT_CLIENT_SERVER_VERSION_CHECK_ENABLED", "false")
        # Heartbeats feed the automation that crashes stalled runs
        # (deployments.control.automations).
        env["PREFECT_FLOWS_HEARTBEAT_FREQUENCY"] = str(self.settings.supervision.heartbeat_seconds)
        return env

    def server_environment(self) -> dict[str, str]:
        """The environment of the Prefect server side (API processes, services): the database
        and Redis settings, which no other process needs, and the API's own protections."""
        env = self.environment()
        assert self.backend is not None and self.auth_string is not None
        env.update(prefect_env(self.backend))
        env.update(
            {
                "PREFECT_SERVER_API_AUTH_STRING": self.auth_string,
                # A web page in the operator's browser may not call the API: state changes need
                # a token from the server (clients fetch one), and only the UI's own origin gets
                # a CORS answer.
                "PREFECT_SERVER_API_CSRF_PROTECTION_ENABLED": "true",
                "PREFECT_SERVER_API_CORS_ALLOWED_ORIGINS": ",".join(self.ui_origins),
            }
        )
        return env

    @property
    def ui_origins(self) -> tuple[str, ...]:
        """The origins the Prefect UI is served from, as a browser names them."""
        return (self.url, f"http://localhost:{self.port}")

    def host_dir(self, host: int) -> Path:
        """What would be the worker host's own disk: its HOME and PREFECT_HOME."""
        return self.data_dir / "hosts" / f"host-{host + 1}"

    def host_environment(self, host: int) -> dict[str, str]:
        """The environment of a worker (and its flow runs) on worker host `host`."""
        env = self.environment()
        if self.hosts > 1:
            home = self.host_dir(host)
            (home / "home").mkdir(parents=True, exist_ok=True)
            env["HOME"] = str(home / "home")
            env["PREFECT_HOME"] = str(home / "prefect")
        return env

    # -- clients ----------------------------------------------------------------------------

    def client(self) -> PrefectClient:
        """An async Prefect client of this stack: `async with stack.client() as client:`."""
        return PrefectClient(api=self.api_url, auth_string=self.auth_string)

    def sync_client(self) -> SyncPrefectClient:
        """A sync Prefect client of this stack: `with stack.sync_client() as client:`."""
        return SyncPrefectClient(api=self.api_url, auth_string=self.auth_string)

    @contextlib.contextmanager
    def http(self, timeout: float = 60.0) -> Iterator[httpx.Client]:
        """A plain HTTP client of the Prefect API with this stack's credentials and a CSRF token
        (the server asks one of every request that changes something), e.g. for benchmarks."""
        assert self.auth_string is not None
        basic = base64.b64encode(self.auth_string.encode()).decode()
        with httpx.Client(
            base_url=self.api_url, timeout=timeout, headers={"Authorization": f"Basic {basic}"}
        ) as client:
            csrf_client = str(uuid.uuid4())
            answer = client.get("/csrf-token", params={"client": csrf_client})
            answer.raise_for_status()
            client.headers["Prefect-Csrf-Token"] = answer.json()["token"]
            client.headers["Prefect-Csrf-Client"] = csrf_client
            yield client

    @contextlib.contextmanager
    def prefect_settings(self) -> Iterator[None]:
        """Point Prefect helpers that use the global client (`run_deployment`) at this stack."""
        updates = {PREFECT_API_URL: self.api_url, PREFECT_API_AUTH_STRING: self.auth_string}
        with temporary_settings(updates=updates):
            yield

    # -- lifecycle --------------------------------------------------------------------------

    def start(self, timeout: float = 90.0) -> Stack:
        """Start everything and return once the workers are registered and the shim's /health
        says ready (an enqueue would be accepted); stop all on failure."""
        try:
            self._start(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self, timeout: float) -> None:
        credentials.private_dir(self.data_dir)
        begin = time.monotonic()
        self.start_server(timeout)
        self.timings["server"] = time.monotonic() - begin
        mark = time.monotonic()
        # Pools first, in-process (a fraction of a second), so the workers can start while the
        # full bootstrap, which spends seconds in `prefect deploy`, runs beside them.
        asyncio.run(self._ensure_pools())
        for host in range(self.hosts):
            for queue in QUEUES:
                if not self.served(queue.name, host):
                    self.start_worker(queue.name, wait=False, host=host)
        if self.api_port is not None and (self.project_dir / "api_shim" / "app.py").exists():
            self.start_shim()
        self.bootstrap()
        assert self.backend is not None
        if not self.backend.scaled:
            # After the bootstrap, which brings the automations these events are for.
            asyncio.run(self._refind_crashed_runs())
        self.timings["bootstrap"] = time.monotonic() - mark
        for host in range(self.hosts):
            for queue in QUEUES:
                self.wait_for_worker(queue.name, timeout, host=host)
        self.timings["workers"] = time.monotonic() - mark
        if self.shim is not None:
            self.wait_for_shim_ready(timeout)
        self.timings["total"] = time.monotonic() - begin

    async def _ensure_pools(self) -> None:
        async with self.client() as client:
            for queue in QUEUES:
                await ensure_pool(client, queue, self.project_dir)
            assert self.backend is not None
            if not self.backend.scaled:
                # This server has just started, its leases in memory: the last one's are gone.
                await release_orphaned_slots(client)
                # Before any worker of ours runs: every unfinished run is the last stack's.
                await crash_orphaned_runs(client)

    async def _refind_crashed_runs(self) -> None:
        # This server has just started, its events in memory: the last one's may be lost.
        assert self._server_started is not None
        async with self.client() as client:
            await refind_crashed_runs(client, crashed_before=self._server_started)

    def start_server(self, timeout: float = 90.0) -> None:
        """The Prefect server; with `server_ports`, its API processes and its services."""
        self._server_started = datetime.now(UTC)
        if not self.server_ports:
            _check_port_free(self.port, "Prefect server")
            self.server = self._child(
                "server",
                ["--host", "127.0.0.1", "--port", str(self.port)],
                module="deployments.system.prefect_server",
                env=self.server_environment(),
            )
            self.servers = [self.server]
            self._wait(
                self.server,
                lambda: _http_ok(f"{self.api_url}/health"),
                timeout,
                f"Prefect server did not answer {self.api_url}/health",
            )
            return
        for index in range(len(self.server_ports)):
            # One after the other: the first one migrates a new database.
            self.start_api_server(index, timeout)
        self.services = self._child(
            "services", ["server", "services", "start"], env=self.server_environment()
        )

    def start_api_server(self, index: int, timeout: float = 90.0) -> Child:
        """(Re)start the API process on `server_ports[index]`, without background services."""
        port = self.server_ports[index]
        _check_port_free(port, f"Prefect API process {index + 1}")
        child = self._child(
            f"server-{index + 1}",
            ["--host", "127.0.0.1", "--port", str(port), "--no-services"],
            module="deployments.system.prefect_server",
            env=self.server_environment(),
        )
        while len(self.servers) <= index:
            self.servers.append(child)
        self.servers[index] = child
        self.server = self.servers[0]
        url = f"http://127.0.0.1:{port}/api/health"
        self._wait(child, lambda: _http_ok(url), timeout, f"Prefect API did not answer {url}")
        return child

    def bootstrap(self) -> None:
        """Run `python -m deployments.control.bootstrap` against this stack; idempotent."""
        argv = [
            sys.executable,
            "-m",
            "deployments.control.bootstrap",
            "--project-dir",
            str(self.project_dir),
        ]
        if self.inventory is not None:
            argv += ["--inventory", str(self.inventory)]
        result = subprocess.run(
            argv,
            env=self.environment(),
            cwd=self.project_dir,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            check=False,
            umask=CHILD_UMASK,
        )
        with _open_log(self.logs_dir / "bootstrap.log") as log:
            log.write((result.stdout + result.stderr).encode())
        if result.returncode != 0:
            tail = result.stderr[-4000:]
            raise StackError(f"bootstrap failed (exit {result.returncode}):\n{tail}")

    def worker_name(self, pool: str, host: int = 0) -> str:
        suffix = f"-{host + 1}" if host else ""
        return f"{pool}@{socket.gethostname()}{suffix}"

    @staticmethod
    def worker_key(pool: str, host: int = 0) -> str:
        """The key of a worker in `workers`: the pool's name on the first host."""
        return f"{pool}@{host + 1}" if host else pool

    def served(self, pool: str, host: int = 0) -> bool:
        """Whether a live worker process serves `pool` on `host`."""
        worker = self.workers.get(self.worker_key(pool, host))
        return worker is not None and worker.alive()

    def worker_processes(self) -> list[Child]:
        """Each worker process once (`workers` maps every pool a process serves to it)."""
        return list({id(child): child for child in self.workers.values()}.values())

    def start_worker(
        self,
        pool: str,
        *,
        wait: bool = True,
        timeout: float = 60.0,
        host: int = 0,
        worker_type: str | None = None,
    ) -> Child:
        """Start (or restart) the worker of `pool` on `host`, limited like the pool itself.

        Fork-server workers are one process for every pool of the host that has no live worker
        (deployments/worker/serve.py): after a crash or a stop of that process, starting the
        worker of one of its pools serves all of them again. The stock worker serves `pool`
        alone. `worker_type` overrides the stack's for this start (e.g. the stock fallback).
        """
        kind = worker_type or self.worker_type
        if self.served(pool, host):
            raise StackError(f"the {self.worker_key(pool, host)} worker is already running")
        pools = [pool]
        if kind == FORKSERVER:
            pools += [q.name for q in QUEUES if q.name != pool and not self.served(q.name, host)]
        # A second guard beside the pool's own limit, which can overshoot (docs/DESIGN.md,
        # "Prefect behaviour the code relies on").
        serving = [
            PoolWorker(p, get_queue(p).concurrency, self.worker_name(p, host)) for p in pools
        ]
        env = {
            "PREFECT_WORKER_QUERY_SECONDS": str(POLL_SECONDS[kind]),
            **self.host_environment(host),
        }
        suffix = f"@{host + 1}" if host else ""
        if kind == FORKSERVER:
            worker = self._child(f"workers{suffix}", argv_of(serving), SERVE, env=env)
        else:
            (only,) = serving
            args = ["worker", "start", "--pool", pool, "--type", kind, "--name", only.name]
            args += ["--limit", str(only.limit)]
            # Pools are the bootstrap's; a worker must not create an empty-template one.
            args += ["--no-create-pool-if-not-found"]
            worker = self._child(f"worker-{pool}{suffix}", args, env=env)
        worker.drains = kind == FORKSERVER
        worker.pools = tuple(pools)
        worker.host = host
        for served in pools:
            self.workers[self.worker_key(served, host)] = worker
        if wait:
            for served in pools:
                self.wait_for_worker(served, timeout, host=host)
        return worker

    def wait_for_worker(self, pool: str, timeout: float = 60.0, *, host: int = 0) -> None:
        """Until the pool's worker has registered with the server (after its first poll)."""
        name = self.worker_name(pool, host)
        worker = self.workers[self.worker_key(pool, host)]
        # The server keeps a stopped worker's registration under the same name: only a
        # heartbeat sent after this one started counts (sent once its setup is done).
        started = worker.started_at

        def registered() -> bool:
            with self.sync_client() as client:
                return any(
                    w.name == name
                    and w.last_heartbeat_time is not None
                    and w.last_heartbeat_time >= started
                    for w in client.read_workers_for_work_pool(pool)
                )

        self._wait(worker, registered, timeout, f"worker {name} did not register")

    def stop_worker(self, pool: str, timeout: float = 15.0, *, host: int = 0) -> None:
        """Stop the worker process of `pool` and its flow runs, as a clean shutdown does (a
        fork-server process serves the host's other pools too)."""
        worker = self.workers.get(self.worker_key(pool, host))
        if worker is not None:
            worker.stop(timeout)

    def kill_worker(self, pool: str, *, host: int = 0) -> None:
        """kill -9 the worker process of `pool` only, as in a crash (a fork-server process
        serves the host's other pools too). A fork-server worker's runs die with it
        (deployments/worker/lifeline.py); the stock worker's live on."""
        worker = self.workers.get(self.worker_key(pool, host))
        if worker is not None:
            worker.kill()

    def start_shim(self, timeout: float = 30.0) -> None:
        assert self.api_port is not None
        _check_port_free(self.api_port, "API shim")
        self.shim = Child(
            "shim",
            [
                sys.executable,
                "-m",
                "uvicorn",
                "api_shim.app:app",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.api_port),
            ],
            self.logs_dir / "shim.log",
        )
        # Only the shim gets the secret: flow-run processes have no use for it.
        env = self.environment()
        assert self.jwt_secret is not None
        env["MM_JWT_SECRET"] = self.jwt_secret
        self.shim.start(env, self.project_dir)
        self._record_children(self.shim)
        port = self.api_port
        self._wait(self.shim, lambda: _port_open(port), timeout, f"API shim not on port {port}")

    def wait_for_shim_ready(self, timeout: float = 60.0) -> None:
        """Until the shim's /health answers 200: Prefect has the pools, queues and deployments
        it needs to accept a job (api_shim.gateway.readiness)."""
        assert self.shim is not None
        url = f"{self.shim_url}/health"
        said: list[str] = []

        def ready() -> bool:
            answer = httpx.get(url, timeout=5)
            try:
                said[:] = [str(answer.json()["message"])]
            except (ValueError, KeyError, TypeError):
                said[:] = [answer.text[:200]]
            return answer.status_code == 200

        try:
            self._wait(self.shim, ready, timeout, f"the API shim did not get ready ({url})")
        except StackError as exc:
            raise StackError(f"{exc}\nlast answer: {said[0] if said else 'none'}") from None

    def stop(self, grace: float | None = None) -> None:
        """Stop everything within about one grace period (`stop_grace` unless given); safe to
        repeat, and `hurry()` shortens it.

        First the workers take no more runs (fork-server workers; the stock one has no such
        step). Then SIGTERM goes to all flow runs and the shim at once, then to all workers,
        then to the server side; each wave waits together for what it signalled and SIGKILLs
        the rest. All waves share one deadline (the server side gets at least `SERVER_GRACE`
        more seconds, so the runs' final states reach it). A flow run still running at the
        deadline is handed back: it is killed, its worker reports it Crashed (within
        `REPORT_GRACE`, even in a hurried stop), and the re-run automation of
        `deployments.control.automations` schedules it again while attempts remain.
        """
        grace = self.stop_grace if grace is None else grace
        self._deadline = time.monotonic() + (0.0 if self._hurried else grace)
        began = time.monotonic()
        workers = [w for w in self.worker_processes() if w.alive()]
        draining = [w for w in workers if w.drains and w.pid is not None]
        for worker in draining:
            assert worker.pid is not None
            with contextlib.suppress(ProcessLookupError):
                os.kill(worker.pid, DRAIN_SIGNAL)
        if draining:
            time.sleep(DRAIN_SETTLE)
        # Flow runs first, while their workers still live to report them.
        runs = [g for w in workers for g in w.flow_run_groups()]
        in_flight = self._runs_in_flight() if runs else []
        front = [self.shim] if self.shim is not None else []
        _end_together(runs, front, self._until)
        self._await_reports(in_flight)
        self.timings["stop runs"] = time.monotonic() - began
        _end_together([], workers, self._until)
        self.timings["stop workers"] = time.monotonic() - began
        back = [c for c in (self.services, *self.servers) if c is not None]
        if self.server is not None and all(c is not self.server for c in back):
            back.append(self.server)
        server_deadline = time.monotonic() + SERVER_GRACE
        _end_together([], back, lambda: max(self._until(), server_deadline))
        self.timings["stop"] = time.monotonic() - began

    def _runs_in_flight(self) -> list[str]:
        """Ids of the runs of our pools that have not ended, as Prefect sees them; none when
        it does not answer (then nobody could take a report either)."""
        body = {
            "flow_runs": {"state": {"type": {"any_": _IN_FLIGHT}}},
            "work_pools": {"name": {"any_": [q.name for q in QUEUES]}},
            "limit": 200,
        }
        try:
            with self.http(timeout=2.0) as http:
                answer = http.post("/flow_runs/filter", json=body)
                answer.raise_for_status()
                return [run["id"] for run in answer.json()]
        except httpx.HTTPError:
            return []

    def _await_reports(self, ids: list[str]) -> None:
        """Until Prefect has an end of each run in `ids` (their workers report each killed
        one Crashed, and the re-run automation schedules it again), `REPORT_GRACE` at most."""
        if not ids:
            return
        deadline = time.monotonic() + REPORT_GRACE
        body = {"flow_runs": {"id": {"any_": ids}, "state": {"type": {"any_": _IN_FLIGHT}}}}
        try:
            with self.http(timeout=2.0) as http:
                while time.monotonic() < deadline:
                    answer = http.post("/flow_runs/count", json=body)
                    answer.raise_for_status()
                    if answer.json() == 0:
                        return
                    time.sleep(0.2)
        except httpx.HTTPError:
            return

    def hurry(self) -> None:
        """Cut a stop in progress short: what still runs is killed (handed back) now. The
        stop's order and its cleanup stay as they were. Before a stop, it makes that one quick."""
        self._hurried = True
        self._deadline = time.monotonic()

    def _until(self) -> float:
        return self._deadline

    def __enter__(self) -> Stack:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- helpers ----------------------------------------------------------------------------

    def _child(
        self,
        name: str,
        args: list[str],
        module: str = "prefect",
        env: dict[str, str] | None = None,
    ) -> Child:
        child = Child(name, [sys.executable, "-m", module, *args], self.logs_dir / f"{name}.log")
        child.start(self.environment() if env is None else env, self.project_dir)
        self._record_children(child)
        return child

    def _record_children(self, new: Child) -> None:
        """List every running child in the data directory, for the next stack to end them if
        this one's supervisor is killed before it can (deployments/system/lock.py)."""
        children = [*self.servers, self.services, *self.worker_processes(), self.shim, new]
        pids = {c.pid for c in children if c is not None and c.alive() and c.pid is not None}
        record_children(self.data_dir, sorted(pids))

    @staticmethod
    def _wait(child: Child, ready: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not child.alive():
                raise StackError(f"{child.name} exited; {child.log_path}:\n{child.log_tail()}")
            with contextlib.suppress(httpx.HTTPError, OSError):
                if ready():
                    return
            time.sleep(0.2)
        raise StackError(f"{what} within {timeout:.0f} s; {child.log_path}:\n{child.log_tail()}")


def _open_log(path: Path) -> BinaryIO:
    """`path` for appending, in a folder of its own user's, readable by that user only."""
    credentials.private_dir(path.parent)
    return open(os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600), "ab")


def _http_ok(url: str) -> bool:
    return httpx.get(url, timeout=2).status_code == 200


def _port_open(port: int) -> bool:
    with socket.create_connection(("127.0.0.1", port), timeout=1):
        return True


def _check_port_free(port: int, what: str) -> None:
    with socket.socket() as sock:
        # As servers bind: connections of a killed one, in TIME_WAIT, must not count as in use.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            raise StackError(f"port {port} for the {what} is in use; pick another one") from None


def _leads_session(pid: int) -> bool:
    with contextlib.suppress(ProcessLookupError):
        return os.getsid(pid) == pid
    return False


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _end_together(pgids: list[int], children: list[Child], deadline: Callable[[], float]) -> None:
    """SIGTERM the groups `pgids` and the children's groups, wait for all of them until
    `deadline()`, SIGKILL the groups still there, reap the children."""
    children = [c for c in children if c.alive()]
    groups = [*pgids, *(c.pid for c in children if c.pid is not None)]
    _terminate_groups(groups, deadline)
    for child in children:
        child.reap()


def _terminate_groups(pgids: list[int], deadline: Callable[[], float]) -> None:
    """SIGTERM each group, wait for its leader to go until `deadline()` (read again on each
    look: a stop can be hurried), SIGKILL the groups still there."""
    for pgid in pgids:
        _signal_group(pgid, signal.SIGTERM)
    waiting = list(pgids)
    while waiting and time.monotonic() < deadline():
        waiting = [p for p in waiting if _group_alive(p)]
        if waiting:
            time.sleep(0.1)
    for pgid in waiting:
        _signal_group(pgid, signal.SIGKILL)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie leader (the worker has not reaped it yet) still counts as a member.
    try:
        state = Path(f"/proc/{pgid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return True
    return state != "Z" or descendants(pgid) != []
