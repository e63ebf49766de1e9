"""Loaded by every Python of a benchmark's stack (`PYTHONPATH`); acts in Prefect's server only.

Appends one line per HTTP request or websocket the server answers, `METHOD PATH`, to the file
named by `MM_BENCH_REQUEST_LOG`, so bench/run_cost.py can count a job's requests by endpoint.
It wraps the outermost FastAPI app only (Prefect mounts its API app inside another one).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

# Read raw, not through tasks/core/settings.py (where it is declared, `BenchSettings`): this
# runs at the start of every Python of the measured stack, before its imports, and must not
# add pydantic's import to each of them.
_LOG = os.environ.get("MM_BENCH_REQUEST_LOG")


def _install(log_path: str) -> None:
    import fastapi

    call = fastapi.FastAPI.__call__
    log = open(log_path, "a", buffering=1)  # Open for the server's whole life.

    async def logged(self: fastapi.FastAPI, scope: Any, receive: Any, send: Any) -> None:
        if scope.get("type") in ("http", "websocket") and not scope.get("root_path"):
            log.write(f"{scope.get('method', 'WS')} {scope.get('path')}\n")
        await call(self, scope, receive, send)

    fastapi.FastAPI.__call__ = logged  # type: ignore[method-assign]


if _LOG and b"deployments.system.prefect_server" in Path("/proc/self/cmdline").read_bytes():
    _install(_LOG)
