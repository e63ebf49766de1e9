"""The `make bench` harness: missing modules show as pending, the table block is replaced."""

from __future__ import annotations

from pathlib import Path

from bench.report import BenchConfig, Row
from bench.run_all import END, START, Benchmark, run_one, section, write_section


def test_a_missing_module_shows_its_goals_as_pending() -> None:
    rows = run_one(
        Benchmark("not_written_yet", [("goal a", "< 1 s"), ("goal b", "> 2")]), BenchConfig()
    )

    assert [(r.goal, r.target, r.met) for r in rows] == [
        ("goal a", "< 1 s", None),
        ("goal b", "> 2", None),
    ]
    assert all("bench/not_written_yet.py (pending)" in r.ours for r in rows)


def test_the_table_block_is_inserted_once_then_replaced(tmp_path: Path) -> None:
    path = tmp_path / "BENCHMARKS.md"
    path.write_text("# Benchmarks\n\nIntro.\n\n## Older section\n\nkept\n")
    first = [Row("backup", "1 MB/s", "2 MB/s", "0.50x", ">= 0.9x", False)]
    second = [Row("backup", "3 MB/s", "2 MB/s", "1.50x", ">= 0.9x", True)]

    write_section(path, section(first, "make bench", 60.0, "1.0"))
    write_section(path, section(second, "make bench", 60.0, "1.0"))

    text = path.read_text()
    assert text.count(START) == text.count(END) == 1
    assert "| 3 MB/s |" in text and "| 1 MB/s |" not in text
    assert text.index("Intro.") < text.index(START) < text.index("## Older section")
    assert text.endswith("kept\n")
