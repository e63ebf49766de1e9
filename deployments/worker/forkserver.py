"""A Prefect worker that starts each flow run from a pre-warmed fork server.

The stock process worker starts `python -m prefect.engine` for every run: 3-5 s of importing
Prefect, paramiko and our flows on 2 cores (docs/DESIGN.md, "The fork-server worker"), most of
a scan's life. This worker keeps
the isolation (every run is a process of its own, killed, timed and reported like the stock
ones) and removes the import: the standard library's `multiprocessing` fork server imports those
modules once, single-threaded, and forks a copy for each run, as Celery's prefork and RQ's fork
do. The child runs Prefect's own engine entry point (`prefect.engine` as `__main__`), so loading
the deployment, pull steps, signals, cancellation and crash reporting are Prefect's.

It also picks runs up when they happen rather than at its next poll: it follows Prefect's event
stream for its pool and polls at once when a run of the pool is scheduled or ends (a slot is
free). Polling on an interval stays as the safety net, so it can be slow (cheap when idle).

Prefect's run machinery (the cancellation observer, its event streams, the process manager) is
set up once for the worker's life, as Prefect's Runner does, not once per run as the stock
process worker does: per run, that was a new client, two websockets to the server and a
cancellation poll of their own.

The fork server and each run die with their owner, even a SIGKILLed one, and a run whose fork
server is lost is made sure dead before it is reported (deployments/worker/lifeline.py;
docs/DESIGN.md, "Who owns each process").

It serves the same `process` pools as the stock worker, which stays a drop-in fallback
(`MM_WORKER_TYPE=process`). The stack runs one for each pool in one process
(deployments/worker/serve.py); `prefect worker start --type forkserver --pool scan` starts one
alone (the `prefect.collections` entry point in pyproject.toml registers the type).
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import contextlib
import multiprocessing
import multiprocessing.connection
import multiprocessing.context
import multiprocessing.forkserver
import multiprocessing.popen_forkserver
import os
import runpy
import signal
import sys
import tempfile
import threading
import warnings
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, TypeVar, cast
from uuid import UUID

import anyio
import anyio.abc
import anyio.to_thread
from prefect.client.schemas.objects import WorkPool
from prefect.events.clients import get_events_subscriber
from prefect.events.filters import (
    EventFilter,
    EventNameFilter,
    EventOccurredFilter,
    EventRelatedFilter,
)
from prefect.flows import load_flow_from_flow_run
from prefect.logging import get_logger
from prefect.settings import Settings, get_current_settings
from prefect.workers.process import ProcessJobConfiguration, ProcessWorker, ProcessWorkerResult

from deployments.control.catalogue import ALL_DEPLOYMENTS
from deployments.control.csrf import serialize_token_fetches
from deployments.worker import lifeline
from deployments.worker.prefect_private import (
    CONTROL_PORT_VARIABLE,
    CONTROL_TOKEN_VARIABLE,
    FLOW_RUN_ID_VARIABLE,
    HOOKS_VARIABLE,
    ControlChannel,
    FlowRunExecutionResult,
    FlowRunExecutorContext,
    ProcessHandle,
)

if TYPE_CHECKING:
    from collections.abc import Callable
    from multiprocessing.context import SpawnProcess

    from prefect.client.orchestration import PrefectClient
    from prefect.client.schemas.objects import FlowRun

#: Imported once by the fork server, so that no run pays for them. Importing them starts no
#: thread (checked in tests/integration/test_forkserver.py), which is what makes forking safe.
#: The flows are those of the job catalogue, so a new deployment is preloaded too.
PRELOAD = (
    "prefect.engine",
    "prefect.flow_engine",
    "prefect.flows",
    "prefect.deployments.steps",
    "paramiko",
    *dict.fromkeys(deployment.module for deployment in ALL_DEPLOYMENTS),
    "deployments.worker.forkserver",
    "deployments.worker.preload",
)

# Prefect loads this module in every worker process (the `prefect.collections` entry point),
# whatever its type, and the fork server preloads it for the runs it forks: all of them send
# changes concurrently.
serialize_token_fetches()

#: Imported by the fork server before PRELOAD: it ties the fork server and its runs to the worker.
BOOT = "deployments.worker.forkserver_boot"

_CONTEXT = multiprocessing.get_context("forkserver")
# Only our modules: the default preload re-imports the parent's `__main__` (Prefect's CLI).
_CONTEXT.set_forkserver_preload([BOOT, *PRELOAD])

#: The one thread that starts the fork server and asks it for runs. The kernel's parent-death
#: signal follows the thread that forked a child, not its process: a fork server started from
#: one of anyio's pooled threads was killed when that thread idled out. This thread lives as
#: long as the worker (the executor keeps it until the interpreter exits).
_STARTER = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="forkserver")

_T = TypeVar("_T")

#: Seconds between looks at a run whose fork server is gone, until it has died too.
ORPHAN_POLL = 0.05


#: Flow-run events of the pool after which there may be a run to start: a new or rescheduled
#: run, or a run that ended and freed a slot.
WAKE_ON = frozenset({"Scheduled", "Completed", "Failed", "Crashed", "Cancelled", "TimedOut"})

#: Seconds before following the event stream again after it broke (polling goes on meanwhile).
RESUBSCRIBE_DELAY = 5.0

#: The signal that tells the worker to take no more runs: the first step of the stack's stop
#: (deployments/system/stack.py), before any run is signalled. Its runs go on; SIGTERM then
#: stops the worker itself as Prefect's CLI does.
DRAIN_SIGNAL = signal.SIGUSR1

#: Set by `DRAIN_SIGNAL`: a signal is the process's, so it drains every worker of the process
#: (deployments/worker/serve.py runs one per pool).
_draining = threading.Event()


def _drain(signum: int, frame: FrameType | None) -> None:
    _draining.set()


def _settings_sources(env: Mapping[str, str], cwd: str) -> tuple[frozenset[tuple[str, str]], str]:
    """What Prefect reads its settings from: PREFECT_ variables and the working directory (its
    .env, prefect.toml and pyproject.toml). `PREFECT__` variables are the engine's, not settings."""
    variables = frozenset(
        (key, value)
        for key, value in env.items()
        if key.upper().startswith("PREFECT_") and not key.upper().startswith("PREFECT__")
    )
    return variables, cwd


#: What a run inherits from the fork server: its environment and working directory, with its
#: settings spelled as a worker passes them to each run (all set ones, from any source).
_SETTINGS_READ_FROM = _settings_sources(
    {**os.environ, **get_current_settings().to_environment_variables(exclude_unset=True)},
    os.getcwd(),
)


def warm_up() -> None:
    """Start the fork server now (a second or two), rather than on the first run.

    Call it on the starter thread (`in_starter_thread`). The fork server reads whom to die with
    from its environment; it is started again from here if it died (`ensure_running`, on each
    run's start), so the variable stays set.
    """
    os.environ[lifeline.OWNER_VARIABLE] = str(os.getpid())
    multiprocessing.forkserver.ensure_running()


async def in_starter_thread(function: Callable[[], _T]) -> _T:
    """`function()` on the starter thread, off the event loop."""
    return await asyncio.wrap_future(_STARTER.submit(function))


class _RunPopen(multiprocessing.popen_forkserver.Popen):
    """multiprocessing's handle of a forked child, telling a lost fork server from an exit.

    The fork server writes each child's wait status into the child's pipe; the stock `poll`
    takes a pipe closed without it (the fork server died) for exit status 255, and two threads
    polling at once (a join, and the next start's clean-up of finished children) could both
    read, the second one then seeing end of file. Here reads take turns, and a lost pipe
    leaves the status unknown (`None`) with `lost` set, for the starter to find the truth.
    """

    def __init__(self, process_obj: Any) -> None:
        self.lost = False
        self._reading = threading.Lock()
        super().__init__(process_obj)

    def poll(self, flag: int = os.WNOHANG) -> int | None:
        if self.returncode is None and not self.lost:
            timeout = 0 if flag == os.WNOHANG else None
            if not multiprocessing.connection.wait([self.sentinel], timeout):
                return None
            with self._reading:
                if self.returncode is None and not self.lost:
                    try:
                        self.returncode = multiprocessing.forkserver.read_signed(self.sentinel)
                    except (OSError, EOFError):
                        self.lost = True
        return self.returncode


class _RunProcess(multiprocessing.context.ForkServerProcess):
    """A child of the fork server whose exit status comes through `_RunPopen`."""

    @staticmethod
    def _Popen(process_obj: Any) -> _RunPopen:
        return _RunPopen(process_obj)


class RunTermination:
    """How Prefect's process manager stops a forked run (its `ProcessTerminationScope`).

    SIGTERM to the run alone, as before, so that its engine winds down and stops its own
    children; SIGKILL to its whole session's group, so that no ssh or tar outlives a run
    killed for good.
    """

    wait_after_graceful_kill = True

    def is_alive(self, pid: int) -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True

    def graceful_kill(self, pid: int) -> None:
        os.kill(pid, signal.SIGTERM)

    def hard_kill(self, pid: int) -> None:
        lifeline.kill_session(pid)

    def close(self) -> None:
        pass


def run_engine(flow_run_id: str, env: Mapping[str, str], cwd: str) -> None:
    """The forked child: Prefect's engine for one flow run, in the run's environment.

    `multiprocessing` ends its children with `os._exit`, which skips `atexit`, so the exit
    hooks are run here, in the interpreter's own order: threading's first (Prefect drains its
    event and log queues there), then `atexit` (which stops the event loop those queues send
    on). The other way round, the last events of a run were lost now and then: a task run's
    final attempt missing from its record in a scaled-mode CI run.
    """
    from prefect.context import refresh_global_settings_context

    # Its own session, and death with the fork server, were set right after the fork
    # (deployments/worker/lifeline.py).
    os.environ.clear()
    os.environ.update(env)
    os.chdir(cwd)
    # Settings were read when the fork server imported Prefect. Reading them again costs about
    # 0.2 s of CPU, a third of a quick scan's process: only when the run's sources differ (the
    # pools' template sets no environment and no working directory of its own, so they rarely
    # do). Like the worker itself, a run does not see edits to the Prefect profile made after
    # the worker started.
    if _settings_sources(env, cwd) != _SETTINGS_READ_FROM:
        refresh_global_settings_context()
    sys.argv = ["prefect.engine", flow_run_id]
    # The fork server imported it already, which is the point; runpy warns about exactly that.
    warnings.filterwarnings("ignore", "'prefect.engine' found in sys.modules", RuntimeWarning)
    try:
        runpy.run_module("prefect.engine", run_name="__main__", alter_sys=True)
    finally:
        threading._shutdown()  # type: ignore[attr-defined]
        atexit._run_exitfuncs()


class ForkServerStarter:
    """Starts a flow run as a child of the fork server (Prefect's `ProcessStarter` protocol)."""

    def __init__(
        self, *, cwd: Path, env: Mapping[str, str | None], control_channel: ControlChannel | None
    ) -> None:
        self._cwd = cwd
        self._env = env
        self._control_channel = control_channel

    async def start(
        self,
        flow_run: FlowRun,
        task_status: anyio.abc.TaskStatus[ProcessHandle] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        env = {key: value for key, value in self._env.items() if value is not None}
        env.pop(lifeline.OWNER_VARIABLE, None)  # The fork server's, not the run's.
        env[FLOW_RUN_ID_VARIABLE] = str(flow_run.id)
        # The worker reports a crash itself; the child must not run crash hooks twice.
        env[HOOKS_VARIABLE] = "false"
        registered = False
        if self._control_channel is not None:
            # Lets a cancel reach the run as an intent before its SIGTERM, as in the stock path.
            with contextlib.suppress(RuntimeError):
                port, token = self._control_channel.register(flow_run.id)
                env[CONTROL_PORT_VARIABLE] = str(port)
                env[CONTROL_TOKEN_VARIABLE] = token
                registered = True
        process = _RunProcess(
            target=run_engine,
            args=(str(flow_run.id), env, str(self._cwd)),
            name=f"flow-run-{flow_run.id}",
        )
        try:
            # A round trip to the fork server (milliseconds); off the event loop all the same.
            await in_starter_thread(process.start)
        except BaseException:
            if registered and self._control_channel is not None:
                self._control_channel.unregister(flow_run.id)
            raise
        assert process.pid is not None
        started = lifeline.start_time(process.pid)
        # ProcessHandle reads only `pid` and `exitcode`, which every multiprocessing process has.
        handle = ProcessHandle(cast("SpawnProcess", process), termination_scope=RunTermination())
        task_status.started(handle)
        await anyio.to_thread.run_sync(process.join, abandon_on_cancel=True)
        popen = cast("_RunPopen", process._popen)  # type: ignore[attr-defined]
        if popen.lost:
            await end_orphan(flow_run.id, process.pid, started)
            # It died of SIGKILL: ours, or the one it asked for at its fork server's death.
            popen.returncode = -signal.SIGKILL


async def end_orphan(flow_run_id: UUID, pid: int, started: int | None) -> None:
    """The fork server died under a run: make sure the run is dead before it is reported.

    Its exit status went with the fork server. Taking the lost pipe for the run's end once
    had a live run reported Crashed, then carry on. It dies with its fork server (its
    parent-death signal) anyway; the kill makes sure, and takes its ssh and tar along.
    """
    was_alive = lifeline.is_alive(pid, started)
    lifeline.kill_session(pid)
    while lifeline.is_alive(pid, started):
        await anyio.sleep(ORPHAN_POLL)
    # Fetched here: a logger made at import is disabled when Prefect configures logging.
    get_logger("worker.forkserver").error(
        "The fork server of flow run %s is gone; %s",
        flow_run_id,
        f"killed the run's process {pid}, which would have died with it"
        if was_alive
        else f"the run's process {pid} had ended too (its exit status went with the server)",
    )


class ForkServerJobConfiguration(ProcessJobConfiguration):
    """The process worker's job configuration, with the settings' environment built once.

    Prefect rebuilds it from the settings for every run: about 60 ms of the worker's CPU each
    time, the most of its share of a quick scan. It changes only with the settings object.
    """

    @classmethod
    def _base_environment(cls) -> dict[str, str]:
        settings = get_current_settings()
        cached = _BASE_ENVIRONMENT.get(id(settings))
        if cached is None or cached[0] is not settings:
            _BASE_ENVIRONMENT.clear()
            cached = (settings, settings.to_environment_variables(exclude_unset=True))
            _BASE_ENVIRONMENT[id(settings)] = cached
        return dict(cached[1])


#: The settings object last seen, and its environment; one entry.
_BASE_ENVIRONMENT: dict[int, tuple[Settings, dict[str, str]]] = {}


class ForkServerWorker(ProcessWorker):
    """The process worker, with runs forked from a warm fork server."""

    type = "forkserver"
    job_configuration = ForkServerJobConfiguration
    _description = "Runs flows as processes forked from a pre-imported fork server."
    _display_name = "Process (fork server)"

    async def setup(self) -> None:
        #: Runs whose crash the executor has reported already (see `_propose_crashed_state`).
        self._crash_reported: set[UUID] = set()
        # First: the stack may ask for a drain as soon as the worker has registered, which
        # happens before the warm-up below ends. setup() runs on the worker's main thread, where
        # Python lets a handler be set.
        signal.signal(DRAIN_SIGNAL, _drain)
        # Entered before, and closed after, everything of the worker's own exit stack: its task
        # groups nest around the worker's, and it outlives the runs in flight. Its observer and
        # process manager serve any number of runs.
        self._executors_stack = contextlib.AsyncExitStack()
        self._executors = await self._executors_stack.enter_async_context(FlowRunExecutorContext())
        try:
            await super().setup()
        except BaseException:
            await self._executors_stack.aclose()
            raise
        await in_starter_thread(warm_up)
        self._wake = anyio.Event()
        self._event_loops = await self._exit_stack.enter_async_context(anyio.create_task_group())
        self._event_loops.start_soon(self._follow_events)
        self._event_loops.start_soon(self._poll_when_woken)

    async def teardown(self, *exc_info: Any) -> None:
        self._event_loops.cancel_scope.cancel()
        try:
            await super().teardown(*exc_info)
        finally:
            await self._executors_stack.__aexit__(*exc_info)

    async def get_and_submit_flow_runs(self) -> list[FlowRun]:
        """Nothing once draining: both the interval poll and the event-woken one come here."""
        if _draining.is_set():
            return []
        return await super().get_and_submit_flow_runs()

    async def _follow_events(self) -> None:
        """Wake the poller on each flow-run event of the pool that may mean a run to start."""
        while True:
            try:
                await self._subscribe()
            except Exception as error:  # The stream is a shortcut; polling still runs.
                self._logger.debug("Event stream broke (%s); following it again soon", error)
            await anyio.sleep(RESUBSCRIBE_DELAY)

    async def _subscribe(self) -> None:
        while self._work_pool is None:  # Known after the first sync with the server.
            await anyio.sleep(0.5)
        pool = f"prefect.work-pool.{self._work_pool.id}"
        events = EventFilter(
            occurred=EventOccurredFilter(since=datetime.now(UTC)),
            event=EventNameFilter(prefix=["prefect.flow-run."]),
            related=EventRelatedFilter(id=[pool]),
        )
        async with get_events_subscriber(filter=events) as subscriber:
            async for event in subscriber:
                # The server's event stream ignores `related` (Prefect 3.9 applies it only to
                # stored events), so every pool's events arrive here: keep our pool's.
                if event.event.rsplit(".", 1)[-1] in WAKE_ON and any(
                    resource.id == pool for resource in event.related
                ):
                    self._wake.set()

    async def _poll_when_woken(self) -> None:
        """One poll per wake-up; events during a poll coalesce into one more."""
        while True:
            await self._wake.wait()
            self._wake = anyio.Event()
            try:
                await self.get_and_submit_flow_runs()
            except Exception:
                self._logger.exception("Polling for flow runs after an event failed")

    async def run(
        self,
        flow_run: FlowRun,
        configuration: ProcessJobConfiguration,
        task_status: anyio.abc.TaskStatus[int] | None = None,
    ) -> ProcessWorkerResult:
        if configuration._command_configured:
            # A custom command is a program of its own, not Prefect's engine: start it as usual.
            # Only a pool template edited by hand has one (ours fixes none: job_template.py).
            return await super().run(flow_run, configuration, task_status)
        if task_status is None:
            task_status = anyio.TASK_STATUS_IGNORED
        working_dir_ctx: contextlib.AbstractContextManager[Any] = (
            tempfile.TemporaryDirectory(suffix="prefect")
            if not configuration.working_dir
            else contextlib.nullcontext(configuration.working_dir)
        )
        execution: FlowRunExecutionResult | None = None
        with working_dir_ctx as working_dir, warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            starter = ForkServerStarter(
                cwd=Path(working_dir).resolve(),
                env=configuration.env,
                control_channel=self._executors.control_channel,
            )
            executor = self._executors.create_executor(
                flow_run,
                starter,
                resolve_flow=load_flow_from_flow_run,
                propose_submitting=False,
            )

            async def execute(
                *, task_status: anyio.abc.TaskStatus[ProcessHandle] = anyio.TASK_STATUS_IGNORED
            ) -> None:
                nonlocal execution
                execution = await executor.submit(task_status=task_status)

            async with anyio.create_task_group() as task_group:
                handle = await task_group.start(execute)
                if handle.pid is None:
                    raise RuntimeError("Flow run process has no PID")
                task_status.started(handle.pid)
        # Its slot of this worker's `--limit` is free only now, after the process has ended.
        self._wake.set()
        if execution is None or execution.status_code is None:
            raise RuntimeError("Failed to start flow run process.")
        if execution.status_code != 0 and not execution.crash_unreported:
            self._crash_reported.add(flow_run.id)
        return ProcessWorkerResult(
            status_code=execution.status_code, identifier=str(execution.handle.pid)
        )

    async def _propose_crashed_state(
        self, flow_run: FlowRun, message: str, client: PrefectClient | None = None
    ) -> None:
        # Prefect's worker reports a non-zero exit again after its executor did: once is
        # enough, and the second report could land on the run the re-run automation had
        # scheduled again by then (deployments/control/automations.py).
        if flow_run.id in self._crash_reported:
            self._crash_reported.discard(flow_run.id)
            return
        await super()._propose_crashed_state(flow_run, message, client)

    def _record_work_pool_snapshot(self, work_pool: WorkPool) -> None:
        # Serving `process` pools is the point (the stock worker stays a drop-in fallback), so
        # Prefect's "worker type mismatch" warning would be a false alarm.
        if work_pool.type == ProcessWorker.type:
            work_pool = work_pool.model_copy(update={"type": self.type})
        super()._record_work_pool_snapshot(work_pool)
