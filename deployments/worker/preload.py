"""Imported last by the fork server: work Prefect leaves to each run's first use, done once.

Every forked run would otherwise repeat it: importing what Prefect imports lazily during a run,
and completing the pydantic models of Prefect's API objects, whose validators are built on
first use (a profile of a quick scan's process showed this as about a sixth of its CPU time).
"""

from __future__ import annotations

import gc
import importlib
import sys

from pydantic import BaseModel

#: Imported during a run of each flow, found by profiling the forked runs.
LAZY_IMPORTS = ("anyio._backends._asyncio", "prefect.task_engine", "encodings.idna")


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
read_inventory()
# What is loaded now stays for every run: out of the collector's sight, a run's collections do
# not walk it, nor write to its pages, which each child would then copy (copy-on-write).
gc.freeze()
