"""What every benchmark module returns, and the one table `make bench` prints.

A benchmark module in `bench/` has a `run(config: BenchConfig) -> list[Row]`; `bench.run_all`
lists the modules. A row compares our figure with a reference measured in the same run.
"""

from __future__ import annotations

import os
import platform
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path


@dataclass(frozen=True)
class BenchConfig:
    """Knobs shared by every benchmark module."""

    #: A smaller data set and fewer rounds: a smoke run, not numbers for BENCHMARKS.md.
    quick: bool = False
    #: Flow runs stored for the API goal (the goal is stated for 100,000).
    api_runs: int = 100_000
    #: Alternating rounds of each side of a comparison; None: the module's default.
    rounds: int | None = None


@dataclass(frozen=True)
class Row:
    """One line of the table: a goal, our figure, the reference, and whether it is met."""

    goal: str
    ours: str
    reference: str
    ratio: str
    target: str
    #: None: nothing to judge (a figure reported for information, or a pending benchmark).
    met: bool | None

    @property
    def verdict(self) -> str:
        return {True: "met", False: "NOT met", None: "-"}[self.met]


def pending(goal: str, module: str, target: str) -> Row:
    """The row of a goal whose benchmark module does not exist yet."""
    return Row(goal, f"see bench/{module}.py (pending)", "-", "-", target, None)


def skipped(goal: str, module: str, target: str) -> Row:
    """The row of a goal whose module this invocation left out (`--only`)."""
    return Row(goal, f"not run this time (`--only`; bench/{module}.py)", "-", "-", target, None)


def failed(goal: str, error: BaseException) -> Row:
    """The row of a benchmark that raised: the table still prints."""
    message = f"{type(error).__name__}: {error}".replace("|", "/").replace("\n", " ")
    return Row(goal, f"failed: {message[:160]}", "-", "-", "-", False)


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def table(rows: Sequence[Row]) -> str:
    """The rows as a Markdown table."""
    lines = [
        "| goal | ours | reference (same run) | ratio | target | met |",
        "| --- | --- | --- | ---: | --- | --- |",
    ]
    lines += [
        f"| {r.goal} | {r.ours} | {r.reference} | {r.ratio} | {r.target} | {r.verdict} |"
        for r in rows
    ]
    return "\n".join(lines)


def machine() -> str:
    """nproc, CPU model, RAM, Python and load: enough to tell two machines apart."""
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor() or "unknown CPU",
    )
    mem_kib = int(Path("/proc/meminfo").read_text().split()[1])
    return (
        f"{os.cpu_count()} cores ({cpu}), {mem_kib / (1 << 20):.0f} GiB RAM, "
        f"Python {platform.python_version()}, {platform.system()} {platform.release()}"
    )


def now() -> str:
    return f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC"


def load() -> str:
    one, five, _ = os.getloadavg()
    return f"{one:.1f} (1 min), {five:.1f} (5 min)"
