"""The private Prefect names of the fork-server worker still exist and still look as we use them.

They are fenced in deployments/worker/prefect_private.py. Each check imports Prefect's module
itself (not our re-export) so that, after an upgrade, the failure names the module and the name
that moved or changed.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import re
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from deployments.worker import prefect_private

REPO = Path(__file__).resolve().parents[2]

#: (module, name) of every private Prefect import of the worker type.
IMPORTED = [
    ("prefect.runner._control_channel", "ControlChannel"),
    ("prefect.runner._flow_run_executor", "FlowRunExecutionResult"),
    ("prefect.runner._flow_run_executor", "FlowRunExecutorContext"),
    ("prefect.runner._flow_run_executor", "FlowRunExecutor"),
    ("prefect.runner._process_manager", "ProcessHandle"),
    ("prefect.runner._process_manager", "ProcessTerminationScope"),
]


def _get(module: str, name: str) -> Any:
    try:
        loaded = importlib.import_module(module)
    except ImportError as error:
        pytest.fail(f"Prefect's private module {module} is gone ({error}); see {_FENCE}")
    if not hasattr(loaded, name):
        pytest.fail(f"{module}.{name} is gone; see {_FENCE}")
    return getattr(loaded, name)


_FENCE = "deployments/worker/prefect_private.py"


def _parameters(function: Any, where: str) -> list[str]:
    return [p for p in inspect.signature(function).parameters if p != "self"] or [where]


@pytest.mark.parametrize(("module", "name"), IMPORTED, ids=[f"{m}.{n}" for m, n in IMPORTED])
def test_each_private_name_still_imports(module: str, name: str) -> None:
    assert _get(module, name) is not None


def test_the_fence_reexports_prefects_own_objects() -> None:
    for module, name in IMPORTED:
        if hasattr(prefect_private, name):
            assert getattr(prefect_private, name) is _get(module, name), f"{module}.{name}"


def test_the_executor_context_creates_executors_as_we_call_it() -> None:
    context = _get("prefect.runner._flow_run_executor", "FlowRunExecutorContext")
    where = "prefect.runner._flow_run_executor.FlowRunExecutorContext"
    assert inspect.iscoroutinefunction(context.__aenter__), f"{where} is no async context"
    assert inspect.iscoroutinefunction(context.__aexit__), f"{where} is no async context"
    parameters = _parameters(context.create_executor, where)
    for name in ("flow_run", "starter", "resolve_flow", "propose_submitting"):
        assert name in parameters, f"{where}.create_executor lost `{name}`: {parameters}"
    # Assigned in __aenter__; the worker reads both for its whole life.
    source = inspect.getsource(context.__aenter__)
    for attribute in ("control_channel", "process_manager"):
        assert f"self.{attribute} =" in source, f"{where} no longer sets `{attribute}`"


def test_an_executor_submits_with_a_task_status_and_returns_its_result() -> None:
    executor = _get("prefect.runner._flow_run_executor", "FlowRunExecutor")
    where = "prefect.runner._flow_run_executor.FlowRunExecutor.submit"
    assert inspect.iscoroutinefunction(executor.submit), where
    assert _parameters(executor.submit, where) == ["task_status"], where
    result = _get("prefect.runner._flow_run_executor", "FlowRunExecutionResult")
    fields = {field.name for field in dataclasses.fields(result)}
    missing = {"handle", "status_code", "crash_unreported"} - fields
    assert not missing, f"prefect.runner._flow_run_executor.FlowRunExecutionResult lost {missing}"


def test_a_process_handle_reads_pid_and_returncode_of_any_object() -> None:
    handle = _get("prefect.runner._process_manager", "ProcessHandle")
    where = "prefect.runner._process_manager.ProcessHandle"
    assert _parameters(handle, where)[:2] == ["_process", "termination_scope"], where
    assert handle(SimpleNamespace(pid=41, exitcode=3)).returncode == 3, f"{where}: exitcode"
    ours = handle(SimpleNamespace(pid=41, returncode=None, exitcode=3))
    assert (ours.pid, ours.returncode) == (41, None), f"{where} prefers `returncode`"


def test_a_termination_scope_has_the_members_we_implement() -> None:
    scope = _get("prefect.runner._process_manager", "ProcessTerminationScope")
    where = "prefect.runner._process_manager.ProcessTerminationScope"
    members = {"is_alive", "graceful_kill", "hard_kill", "close", "wait_after_graceful_kill"}
    declared = set(vars(scope)) | set(getattr(scope, "__annotations__", {}))
    assert members <= declared, f"{where} changed: {sorted(members - declared)} gone"
    for name in members - {"wait_after_graceful_kill", "close"}:
        assert _parameters(getattr(scope, name), where) == ["pid"], f"{where}.{name}"


def test_the_control_channel_registers_and_unregisters_by_flow_run_id() -> None:
    channel = _get("prefect.runner._control_channel", "ControlChannel")
    where = "prefect.runner._control_channel.ControlChannel"
    assert _parameters(channel.register, where) == ["flow_run_id"], f"{where}.register"
    assert _parameters(channel.unregister, where) == ["flow_run_id"], f"{where}.unregister"


@pytest.mark.parametrize(
    ("variable", "module"),
    list(prefect_private.ENGINE_VARIABLES.items()),
    ids=list(prefect_private.ENGINE_VARIABLES),
)
def test_the_engine_still_reads_each_variable_we_set(variable: str, module: str) -> None:
    source = inspect.getsource(importlib.import_module(module))
    assert variable in source, f"{module} no longer reads {variable}; see {_FENCE}"


_ATTRIBUTES = [
    (module, cls, name)
    for (module, cls), names in prefect_private.PRIVATE_ATTRIBUTES.items()
    for name in names
]


@pytest.mark.parametrize(
    ("module", "cls", "name"), _ATTRIBUTES, ids=[f"{c}.{n}" for _, c, n in _ATTRIBUTES]
)
def test_each_private_member_we_use_still_exists(module: str, cls: str, name: str) -> None:
    owner = _get(module, cls)
    private_attributes = getattr(owner, "__private_attributes__", {})
    # Instance attributes exist only once __init__ ran: look for their assignment.
    assigned = f"self.{name}" in inspect.getsource(owner.__init__)
    assert hasattr(owner, name) or name in private_attributes or assigned, (
        f"{module}.{cls}.{name} is gone; see {_FENCE}"
    )


def test_the_members_we_override_keep_their_signatures() -> None:
    base = _get("prefect.workers.base", "BaseJobConfiguration")
    assert isinstance(inspect.getattr_static(base, "_base_environment"), classmethod)
    assert _parameters(base._base_environment, "") == [""], "_base_environment takes arguments"
    worker = _get("prefect.workers.base", "BaseWorker")
    snapshot = _parameters(worker._record_work_pool_snapshot, "")
    assert snapshot == ["work_pool"], f"BaseWorker._record_work_pool_snapshot{snapshot}"
    crashed = _parameters(worker._propose_crashed_state, "")
    assert crashed == ["flow_run", "message", "client"], (
        f"BaseWorker._propose_crashed_state{crashed}"
    )
    assert inspect.iscoroutinefunction(worker._propose_crashed_state)


_STDLIB = [(m, n) for m, names in prefect_private.STDLIB_PRIVATE.items() for n in names]


@pytest.mark.parametrize(("module", "name"), _STDLIB, ids=[f"{m}.{n}" for m, n in _STDLIB])
def test_each_private_name_of_the_standard_library_still_exists(module: str, name: str) -> None:
    *path, last = name.split(".")
    owner: Any = importlib.import_module(module)
    for part in path:
        owner = getattr(owner, part, None)
    if last == "_popen":  # An instance attribute: assigned by `start()`.
        assert "self._popen = self._Popen(self)" in inspect.getsource(owner.start), name
        return
    assert callable(getattr(owner, last, None)), f"{module}.{name} is gone; see {_FENCE}"


def test_a_fork_server_popen_reads_its_status_from_its_sentinel() -> None:
    """`_RunPopen.poll` replaces the stock one: it must still read what `_launch` opened."""
    from multiprocessing import popen_forkserver

    assert "self.sentinel" in inspect.getsource(popen_forkserver.Popen._launch)
    assert "read_signed(self.sentinel)" in inspect.getsource(popen_forkserver.Popen.poll)


def test_no_other_module_of_the_worker_type_imports_a_private_prefect_name() -> None:
    """The fence holds only if nothing goes around it."""
    private = re.compile(r"^\s*(from|import)\s+prefect(\.\w+)*\._\w+", re.MULTILINE)
    offenders = [
        str(path.relative_to(REPO))
        for path in (REPO / "deployments" / "worker").rglob("*.py")
        if path.name != "prefect_private.py" and private.search(path.read_text())
    ]
    assert offenders == [], f"private Prefect imports outside {_FENCE}: {offenders}"
