"""Issue 7: a burst of jobs through the API, five rounds in a row, on the embedded default.

    uv run python -m bench.burst [--quick] [--rounds N] [--worker-type process]

One stack (SQLite, one fork-server worker per pool) with an sshd on loopback. Each round POSTs
300 quick scans, 60 backups of a tiny source directory and 6 updates (`true`) to the API shim
from 10 concurrent clients over 10 s, kinds shuffled together, then waits for every run to end.
Per round it reports the enqueue latency p50/p95 (goal p95 < 250 ms), the 5xx answers, the
final states (none Crashed), "database is locked" lines in the server log, how many runs a
deployment concurrency limit sent back, and the most runs Running at once per pool from the
state history (limits 5 scans, 2 backups, 1 update). A round starts when the last one's runs
have all ended, so the rounds repeat the same load on a database that keeps growing.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import yaml

from bench.report import BenchConfig, Row, load, machine, now, table
from deployments.control.queues import QUEUES_BY_NAME
from deployments.system.local_target import LocalTarget, free_port
from deployments.system.stack import Stack
from tasks.core.callers import mint_token
from tests.support.burst import (
    Answer,
    Latency,
    Post,
    burst_plan,
    final_states,
    post_burst,
    read_history,
    wait_final,
)

#: The burst of the issue, and its pace.
SCANS, BACKUPS, UPDATES = 300, 60, 6
CLIENTS, SPREAD = 10, 10.0
#: Servers the jobs go to, in turn (each scan and backup server is the same sshd).
SERVERS = 10
LATENCY_GOAL = 0.250
LOCKED = "database is locked"


@dataclass
class Round:
    """What one burst did."""

    answers: list[Answer]
    latency: Latency
    finals: dict[str, int]
    peaks: dict[str, int]
    sent_back: int
    locked: int
    #: Seconds from the first POST to the last run's end.
    seconds: float
    errors: list[str] = field(default_factory=list)

    @property
    def server_errors(self) -> int:
        return sum(a.status >= 500 or a.status == 0 for a in self.answers)

    @property
    def accepted(self) -> int:
        return sum(a.status == 202 for a in self.answers)


@dataclass
class Bench:
    """The stack and inventory every round uses."""

    stack: Stack
    token: str
    plan: list[Post]

    def round(self, timeout: float) -> Round:
        server_log = self.stack.logs_dir / "server.log"
        locked_before = _count(server_log, LOCKED)
        began = datetime.now(UTC)
        assert self.stack.shim_url is not None
        answers = post_burst(
            self.stack.shim_url, self.token, self.plan, clients=CLIENTS, spread=SPREAD
        )
        ids = [a.job_id for a in answers if a.job_id is not None]
        with self.stack.sync_client() as client:
            runs = wait_final(client, ids, timeout)
            ended = max(r.end_time or r.state.timestamp for r in runs if r.state is not None)
            # A minute of margin: a run still Running from before counts against the limit too.
            history = read_history(client, began - timedelta(minutes=1))
        errors = sorted({f"{a.status} {a.message}" for a in answers if a.status != 202})
        return Round(
            answers,
            Latency.of(answers),
            dict(final_states(runs)),
            history.peaks(),
            history.sent_back(),
            _count(server_log, LOCKED) - locked_before,
            (ended - began).total_seconds(),
            errors,
        )


def _count(path: Path, needle: str) -> int:
    try:
        return path.read_text(errors="replace").count(needle)
    except OSError:
        return 0


#: The user whose token sends the burst; the inventory's servers are theirs.
USER = "bench-burst"


def start(
    work: Path,
    worker_type: str | None,
    scale: float,
    extra_env: dict[str, str] | None = None,
    user: str = USER,
) -> tuple[Bench, LocalTarget]:
    target = LocalTarget(home=work / "target").start()
    source = work / "source"
    (source / "etc").mkdir(parents=True)
    (source / "etc" / "app.conf").write_text("answer = 42\n" * 100)
    (source / "data.bin").write_bytes(os.urandom(20_000))
    scan_ids = [uuid.uuid4() for _ in range(SERVERS)]
    backup_ids = [uuid.uuid4() for _ in range(SERVERS)]
    update_ids = [uuid.uuid4() for _ in range(2)]
    mine: dict[str, object] = {"owners": [user]}
    servers = (
        [target.server_entry(str(i), f"scan-{n}", **mine) for n, i in enumerate(scan_ids)]
        + [
            target.server_entry(str(i), f"backup-{n}", backup={"paths": [str(source)]}, **mine)
            for n, i in enumerate(backup_ids)
        ]
        + [
            target.server_entry(str(i), f"update-{n}", update={"command": "true"}, **mine)
            for n, i in enumerate(update_ids)
        ]
    )
    inventory = work / "inventory.yaml"
    inventory.write_text(yaml.safe_dump({"servers": servers}, sort_keys=False))
    options: dict[str, object] = {} if worker_type is None else {"worker_type": worker_type}
    stack = Stack(
        work / "stack",
        port=free_port(),
        inventory=inventory,
        api_port=free_port(),
        ui=False,
        extra_env=extra_env or {},
        **options,  # type: ignore[arg-type]
    )
    stack.start()
    assert stack.jwt_secret is not None
    token = mint_token(stack.jwt_secret, user, "user", ttl=timedelta(hours=6))
    plan = burst_plan(
        scan_ids,
        backup_ids,
        update_ids,
        scans=round(SCANS * scale),
        backups=round(BACKUPS * scale),
        updates=max(1, round(UPDATES * scale)),
    )
    return Bench(stack, token, plan), target


def measure(
    rounds: int,
    scale: float,
    worker_type: str | None = None,
    report: Callable[[int, Round], None] | None = None,
) -> list[Round]:
    """The rounds, one after the other on one stack; `report(number, round)` after each."""
    with tempfile.TemporaryDirectory(prefix="mm-bench-burst-") as tmp:
        bench, target = start(Path(tmp), worker_type, scale)
        try:
            results = []
            for number in range(1, rounds + 1):
                results.append(bench.round(timeout=1800))
                if report is not None:
                    report(number, results[-1])
            return results
        finally:
            bench.stack.stop()
            target.stop()


def rows(results: list[Round], first: int = 1) -> list[Row]:
    limits = {name: queue.concurrency for name, queue in QUEUES_BY_NAME.items()}
    out = []
    for number, result in enumerate(results, first):
        jobs = len(result.answers)
        pools = {pool: result.peaks.get(f"pool:{pool}", 0) for pool in limits}
        crashed = result.finals.get("Crashed", 0)
        completed = result.finals.get("Completed", 0)
        held = all(pools[p] <= limits[p] for p in limits)
        out.append(
            Row(
                f"burst round {number}: {jobs} jobs from {CLIENTS} clients over {SPREAD:.0f} s",
                f"enqueue p50 {result.latency.p50 * 1000:.0f} ms, "
                f"p95 {result.latency.p95 * 1000:.0f} ms; {result.server_errors} 5xx; "
                f"{completed}/{jobs} completed, {crashed} crashed; most running "
                + ", ".join(f"{p} {n}" for p, n in pools.items()),
                f"max {result.latency.max * 1000:.0f} ms; {result.locked} lock errors; "
                f"{result.sent_back} sent back by a deployment limit; "
                f"all ended in {result.seconds:.0f} s",
                "-",
                "p95 < 250 ms, no 5xx, none crashed, never > "
                + "/".join(str(n) for n in limits.values()),
                result.latency.p95 < LATENCY_GOAL
                and result.server_errors == 0
                and crashed == 0
                and completed == jobs
                and held,
            )
        )
    return out


def run(config: BenchConfig) -> list[Row]:
    rounds = config.rounds or (2 if config.quick else 5)
    return rows(measure(rounds, 0.2 if config.quick else 1.0))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a fifth of the burst, 2 rounds")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--worker-type", default=None, help="forkserver (default) or process")
    args = parser.parse_args()
    os.environ.setdefault("DO_NOT_TRACK", "1")
    rounds = args.rounds or (2 if args.quick else 5)
    print(f"{now()}; {machine()}; load {load()}", flush=True)

    def report(number: int, result: Round) -> None:
        print(
            f"round {number} ({now()}, load {load()}): finals {result.finals}; peaks {result.peaks}"
        )
        for error in result.errors[:5]:
            print(f"  answer: {error[:300]}")
        print(table(rows([result], number)), flush=True)

    results = measure(rounds, 0.2 if args.quick else 1.0, args.worker_type, report)
    print(table(rows(results)))
    print(f"load after: {load()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
