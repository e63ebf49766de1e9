"""Every private name of Prefect that the fork-server worker relies on, in one place.

Prefect's stock process worker (prefect/workers/process.py) is built from the runner's private
modules; ours reuses the same pieces so that starting, killing, cancelling and crash reporting
stay Prefect's. A Prefect upgrade may move or change any of them without notice: each is
imported or named here only, with what we use it for, and tests/unit/test_prefect_private.py
checks the attributes and signatures we rely on, so an upgrade fails there, naming the missing
piece, not in a run. deployments/worker/forkserver.py imports these names from here.
"""

from __future__ import annotations

# A starter registers each run with the control channel (`register(flow_run_id) -> (port,
# token)`, `unregister(flow_run_id)`), so a cancel reaches the run as an intent before its
# SIGTERM, as in the stock path (prefect/runner/_starter_engine.py).
from prefect.runner._control_channel import ControlChannel

# The per-run lifecycle (propose states, register the process, read its exit, report a crash)
# and the context that owns one client, process manager, control channel and cancellation
# observer for the worker's whole life (`FlowRunExecutorContext.create_executor`), as
# Prefect's Runner does. `FlowRunExecutionResult` is what `submit()` returns: `handle`,
# `status_code` and `crash_unreported`.
from prefect.runner._flow_run_executor import FlowRunExecutionResult, FlowRunExecutorContext

# `ProcessHandle(process, termination_scope=...)` is what a starter hands the executor: it
# reads `pid` and `returncode` (else `exitcode`) of any object, and kills through the scope,
# whose interface is the `ProcessTerminationScope` protocol (`is_alive`, `graceful_kill`,
# `hard_kill`, `close`, `wait_after_graceful_kill`).
from prefect.runner._process_manager import ProcessHandle, ProcessTerminationScope

__all__ = [
    "CONTROL_PORT_VARIABLE",
    "CONTROL_TOKEN_VARIABLE",
    "ENGINE_VARIABLES",
    "FLOW_RUN_ID_VARIABLE",
    "HOOKS_VARIABLE",
    "PRIVATE_ATTRIBUTES",
    "STDLIB_PRIVATE",
    "ControlChannel",
    "FlowRunExecutionResult",
    "FlowRunExecutorContext",
    "ProcessHandle",
    "ProcessTerminationScope",
]

#: The engine's own environment (`PREFECT__*`, not settings), set for each run as Prefect's
#: starters set it (prefect/runner/_starter_engine.py). Which run to execute (read by
#: prefect/engine.py):
FLOW_RUN_ID_VARIABLE = "PREFECT__FLOW_RUN_ID"
#: "false": the worker reports a crash itself, the child must not run crash hooks twice
#: (read by prefect/flow_engine.py):
HOOKS_VARIABLE = "PREFECT__ENABLE_CANCELLATION_AND_CRASHED_HOOKS"
#: Where the run connects back to the control channel (read by
#: prefect/_internal/control_listener.py):
CONTROL_PORT_VARIABLE = "PREFECT__CONTROL_PORT"
CONTROL_TOKEN_VARIABLE = "PREFECT__CONTROL_TOKEN"

#: Each variable and the Prefect module whose source reads it.
ENGINE_VARIABLES = {
    FLOW_RUN_ID_VARIABLE: "prefect.engine",
    HOOKS_VARIABLE: "prefect.flow_engine",
    CONTROL_PORT_VARIABLE: "prefect._internal.control_listener",
    CONTROL_TOKEN_VARIABLE: "prefect._internal.control_listener",
}

#: Private members of Prefect's public classes that ForkServerWorker reads or overrides:
#: (module, class) -> member -> why.
PRIVATE_ATTRIBUTES: dict[tuple[str, str], dict[str, str]] = {
    ("prefect.workers.process", "ProcessJobConfiguration"): {
        # Set by `prepare_for_flow_run`: a custom command is a program of its own, started
        # the stock way.
        "_command_configured": "a pydantic private attribute, True when the pool has a command",
        # Overridden to build the settings' environment once, not once per run.
        "_base_environment": "classmethod () -> dict[str, str]",
    },
    ("prefect.workers.process", "ProcessWorker"): {
        "_display_name": "class attribute, the type's name for people",
    },
    ("prefect.workers.base", "BaseWorker"): {
        "_exit_stack": "AsyncExitStack the worker closes at teardown; our event loops join it",
        "_work_pool": "the pool after the first sync, for the event filter",
        "_logger": "the worker's logger",
        "_description": "class attribute, read by `get_description()`",
        # Overridden: pools stay type `process`, so the type-mismatch warning is a false alarm.
        "_record_work_pool_snapshot": "method (self, work_pool) -> None",
        # Overridden: the worker reports a crash the executor reported already once more.
        "_propose_crashed_state": "async method (self, flow_run, message, client=None) -> None",
    },
}

#: Private names of the standard library that deployments/worker/forkserver.py uses, checked
#: by the same test (they may change with the Python version): module -> name -> why.
STDLIB_PRIVATE: dict[str, dict[str, str]] = {
    "threading": {
        # A forked run ends with os._exit, which skips the interpreter's exit: run_engine runs
        # threading's exit hooks first (Prefect drains its event and log queues there) ...
        "_shutdown": "function () -> None",
    },
    "atexit": {
        # ... then atexit's, in the interpreter's own order.
        "_run_exitfuncs": "function () -> None",
    },
    # A forked run's exit status, read from the pipe the fork server writes it into, with a
    # lost fork server told apart from an exit (forkserver.py, `_RunPopen`, `_RunProcess`).
    "multiprocessing.context": {
        "ForkServerProcess._Popen": "staticmethod (process_obj) -> Popen, the hook we replace",
    },
    "multiprocessing.popen_forkserver": {
        "Popen.poll": "method (flag) -> int | None, which we override",
    },
    "multiprocessing.forkserver": {
        "read_signed": "function (fd) -> int, raising EOFError on a closed pipe",
    },
    "multiprocessing.process": {
        "BaseProcess._popen": "set by `start()` to `self._Popen(self)`",
    },
}
