"""Imported last by the fork server: work Prefect leaves to each run's first use, done once.

Every forked run would otherwise repeat it: importing what Prefect imports lazily during a run,
completing the pydantic models of Prefect's API objects, whose validators are built on first
use (a profile of a quick scan's process showed this as about a sixth of its CPU time), and
building a TLS context for each Prefect client it opens (`share_client_tls_context`).
"""

from __future__ import annotations

import functools
import gc
import importlib
import ssl
import sys
from collections.abc import Callable
from typing import Any

import certifi
from prefect.client.orchestration import PrefectClient, SyncPrefectClient
from prefect.settings import PREFECT_API_SSL_CERT_FILE, PREFECT_API_TLS_INSECURE_SKIP_VERIFY
from pydantic import BaseModel

#: Imported during a run of each flow, found by profiling the forked runs.
LAZY_IMPORTS = (
    "anyio._backends._asyncio",
    "prefect.task_engine",
    "encodings.idna",
    # A task's call imports it (and graphviz): ~4 % of a quick scan's process.
    "prefect.utilities.visualization",
)


def complete_models(prefix: str = "prefect.") -> int:
    """Build the validators of the loaded `prefix` modules' incomplete models; how many built."""
    built = 0
    for name, module in list(sys.modules.items()):
        if not name.startswith(prefix) or module is None:
            continue
        for value in list(vars(module).values()):
            if (
                isinstance(value, type)
                and issubclass(value, BaseModel)
                and not value.__pydantic_complete__
            ):
                try:
                    built += bool(value.model_rebuild())
                except Exception:  # Unresolvable here: built on first use, as before.
                    continue
    return built


def share_client_tls_context() -> Callable[[], ssl.SSLContext | None]:
    """One verified TLS context for every Prefect client of the process, built once.

    Prefect's clients build one from a CA file each time one is made (`PrefectClient.__init__`:
    `ssl.create_default_context(cafile=...)`), about 20 ms of CPU; a run makes several (the
    engine's, its log and event workers', the suspension observer's), and a profile of quick
    scans' processes found 40 % of their CPU time there. A context passed as
    `httpx_settings["verify"]` is used as it is, so each client gets the one Prefect would
    have built (its PREFECT_API_SSL_CERT_FILE, else certifi's bundle, verification on), made
    once per CA file; built here, in the fork server, it costs a run nothing. A caller's own
    `verify`, and PREFECT_API_TLS_INSECURE_SKIP_VERIFY, keep Prefect's own path. Returns
    the function that gives the context (None where Prefect's path stays).
    """
    contexts: dict[str, ssl.SSLContext] = {}

    def verified() -> ssl.SSLContext | None:
        if PREFECT_API_TLS_INSECURE_SKIP_VERIFY.value():
            return None
        cafile = PREFECT_API_SSL_CERT_FILE.value() or certifi.where()
        if cafile not in contexts:
            contexts[cafile] = ssl.create_default_context(cafile=cafile)
        return contexts[cafile]

    for client in (PrefectClient, SyncPrefectClient):
        client.__init__ = _with_context(client.__init__, verified)  # type: ignore[method-assign]
    verified()
    return verified


def _with_context(
    init: Callable[..., None], verified: Callable[[], ssl.SSLContext | None]
) -> Callable[..., None]:
    @functools.wraps(init)
    def __init__(
        self: Any, *args: Any, httpx_settings: dict[str, Any] | None = None, **kwargs: Any
    ) -> None:
        context = verified()
        if context is not None and "verify" not in (httpx_settings or {}):
            httpx_settings = {**(httpx_settings or {}), "verify": context}
        init(self, *args, httpx_settings=httpx_settings, **kwargs)

    return __init__


def read_inventory() -> None:
    """Parse the inventory once here, so that each run only checks the file is unchanged.

    Every run looks its server up in the inventory; parsing a few hundred servers' YAML and
    validating them costs tens of milliseconds a run. Settings are read without the process's
    cache (`get_settings`), which the runs must fill from their own environment.
    """
    from tasks.core.inventory import load_inventory
    from tasks.core.settings import PathSettings

    try:
        load_inventory(PathSettings().inventory)
    except Exception:  # Missing or invalid now: each run reports it, as before.
        return


for _name in LAZY_IMPORTS:
    importlib.import_module(_name)
complete_models()
share_client_tls_context()
read_inventory()
# What is loaded now stays for every run: out of the collector's sight, a run's collections do
# not walk it, nor write to its pages, which each child would then copy (copy-on-write).
gc.freeze()
