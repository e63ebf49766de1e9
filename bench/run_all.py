"""`make bench`: every goal of issues 6 and 21 in one run, one table, into BENCHMARKS.md.

    uv run python -m bench.run_all [--quick] [--only backup,api] [--api-runs N] [--no-write]

Each benchmark is a module of `bench/` with `run(config: BenchConfig) -> list[Row]`, listed in
`BENCHMARKS` below; a listed module that does not exist yet shows as a pending row, and one
that raises shows as a failed row, so the table always prints. A full run (not `--quick`)
replaces the table between the markers in BENCHMARKS.md, with the date, machine and command,
unless a module failed (`--write` writes anyway).
"""

from __future__ import annotations

import argparse
import importlib
import os
import shlex
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bench.report import BenchConfig, Row, failed, load, machine, now, pending, skipped, table

BENCHMARKS_MD = Path(__file__).resolve().parent.parent / "BENCHMARKS.md"
START = "<!-- make bench: start -->"
END = "<!-- make bench: end -->"


@dataclass(frozen=True)
class Benchmark:
    """A module of `bench/` and the goals it answers (shown as pending while it is missing)."""

    module: str
    #: (goal, target) of each row the module will return, for the pending placeholder.
    goals: list[tuple[str, str]] = field(default_factory=list)


BENCHMARKS = [
    Benchmark(
        "backup",
        [
            ("backup throughput", ">= 1.0x of `ssh tar \\| tee file \\| sha256sum` + fsync"),
            ("encrypted backup throughput", ">= 0.9x of plain"),
        ],
    ),
    Benchmark(
        "memory",
        [
            ("memory: embedded stack idle", "<= 600 MiB PSS"),
            ("memory: each running job", "<= 100 MiB PSS"),
            ("memory: 2 backups, 5 scans, 1 update running", "<= 1.2 GiB PSS"),
        ],
    ),
    Benchmark(
        "dispatch",
        [
            ("dispatch latency", "p50 <= 0.2 s, p95 <= 0.3 s"),
            ("quick scans per minute", ">= 200/min, limit 5 never exceeded"),
        ],
    ),
    Benchmark("burst", [("enqueue p95 during the burst", "<= 1.1x Prefect's create_flow_run")]),
    Benchmark(
        "sse",
        [("100 open event streams", "Prefect server CPU <= one poll a second")],
    ),
    Benchmark("api", [("API job read and lists", "<= 1.5x; < 1 s")]),
    Benchmark("stop", [("idle stop", "< 3 s")]),
    Benchmark("bulk_enqueue", [("bulk enqueue of 300 quick scans", "< 1x of 300 requests")]),
]


def run_one(benchmark: Benchmark, config: BenchConfig) -> list[Row]:
    name = f"bench.{benchmark.module}"
    try:
        module = importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name != name:
            return [failed(benchmark.module, exc)]
        return [pending(goal, benchmark.module, target) for goal, target in benchmark.goals]
    began = time.monotonic()
    print(f"== {name}", flush=True)
    try:
        rows: list[Row] = module.run(config)
    except Exception as exc:
        print(f"{name} failed: {exc!r}", file=sys.stderr)
        return [failed(goal, exc) for goal, _ in benchmark.goals[:1] or [(name, "")]]
    print(f"== {name}: {time.monotonic() - began:.0f} s", flush=True)
    return rows


def section(rows: Sequence[Row], command: str, seconds: float, began_load: str) -> str:
    """The BENCHMARKS.md block: the table and how it was made."""
    return "\n".join(
        [
            START,
            "## Latest `make bench` (all goals, one run)",
            "",
            f"- Command: `{command}` ({seconds / 60:.1f} min)",
            f"- Date: {now()}; machine: {machine()}",
            f"- Load average (the machine is shared): {began_load} at the start, {load()} at"
            " the end",
            "- Each reference is measured in the same run as our figure, alternately where both",
            "  are timings; medians. See each module's docstring in `bench/` for the method.",
            "",
            table(rows),
            END,
        ]
    )


def write_section(path: Path, block: str) -> None:
    """Replace the block between the markers, or put it after the file's first paragraph."""
    text = path.read_text()
    if START in text and END in text:
        head, rest = text.split(START, 1)
        tail = rest.split(END, 1)[1]
        text = head + block + tail
    else:
        intro, sep, rest = text.partition("\n\n")
        intro2, sep2, rest2 = rest.partition("\n\n")
        text = intro + sep + intro2 + sep2 + block + "\n\n" + rest2
    path.write_text(text)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small data, few rounds (smoke)")
    parser.add_argument("--only", default=None, help="comma-separated modules, e.g. backup,api")
    parser.add_argument("--api-runs", type=int, default=None, help="flow runs for the API goal")
    parser.add_argument("--rounds", type=int, default=None, help="alternating rounds per pair")
    parser.add_argument(
        "--write",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="update BENCHMARKS.md (default: on for a full run of every module)",
    )
    args = parser.parse_args(argv)
    config = BenchConfig(
        quick=args.quick,
        api_runs=args.api_runs or (10_000 if args.quick else 100_000),
        rounds=args.rounds,
    )
    wanted = set(args.only.split(",")) if args.only else None
    unknown = (wanted or set()) - {b.module for b in BENCHMARKS}
    if unknown:
        parser.error(f"no benchmark {', '.join(sorted(unknown))} in bench/run_all.py")
    began = time.monotonic()
    began_load = load()
    rows: list[Row] = []
    for benchmark in BENCHMARKS:
        if wanted is None or benchmark.module in wanted:
            rows += run_one(benchmark, config)
        else:
            rows += [skipped(goal, benchmark.module, target) for goal, target in benchmark.goals]
    seconds = time.monotonic() - began
    print()
    print(table(rows))
    broken = [row.goal for row in rows if row.ours.startswith("failed:")]
    # A full run replaces the table, unless a module failed: its good numbers would be lost.
    write = args.write if args.write is not None else not (args.quick or wanted or broken)
    if broken and not write:
        print(f"\nnot written into BENCHMARKS.md: {', '.join(broken)} failed")
    if write:
        given = list(argv if argv is not None else sys.argv[1:])
        if os.environ.get("MAKELEVEL"):
            command = "make bench" + (f" BENCH={shlex.quote(shlex.join(given))}" if given else "")
        else:
            command = shlex.join(["uv", "run", "python", "-m", "bench.run_all", *given])
        write_section(BENCHMARKS_MD, section(rows, command, seconds, began_load))
        print(f"\nwrote the table into {BENCHMARKS_MD}")


if __name__ == "__main__":
    main()
