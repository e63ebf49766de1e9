"""Issue 21's goal 5: enqueue latency during issue 7's burst, the shim against Prefect's own.

    uv run python -m bench.burst [--quick] [--rounds N] [--worker-type process]

One stack (SQLite, one fork-server worker per pool) with an sshd on loopback. A round sends
300 quick scans, 60 backups of a tiny source directory and 6 updates (`true`) from 10
concurrent clients over 10 s, kinds shuffled together, then waits for every run to end. It is
sent two ways, in alternating rounds (each pair's order swapped from the last), the runs of
both executed by the workers alike:

- through the shim, `POST /api/servers/:id/{scan,backup,update}`, as users do;
- the reference: straight to Prefect's `POST /deployments/{id}/create_flow_run`, the same
  number of `create_flow_run_from_deployment` calls from the same number of clients on the
  same schedule, through the `enqueue` and Prefect client the shim uses, with its parameters,
  tags, queue and kind of idempotency key.

The goal: the shim's p95 <= 1.1x Prefect's, the median over the pairs of each pair's ratio.
Each round also reports the enqueue p50/p95, the failed answers, the final states (none
Crashed), "database is locked" lines in the server log, how many runs a deployment
concurrency limit sent back, and the most runs Running at once per pool from the state
history (limits 5 scans, 2 backups, 1 update). Before the first round, 20 posts each way (and
their runs) warm the fresh stack. A round starts when the last one's runs have all ended, so
the rounds repeat the same load on a database that keeps growing.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import UUID

import yaml

from api_shim.schemas import BackupRequest
from bench.report import BenchConfig, Row, load, machine, median, now, table
from deployments.control.catalogue import CATALOGUE, user_tag
from deployments.control.jobs import enqueue
from deployments.control.queues import QUEUES_BY_NAME
from deployments.system.local_target import LocalTarget, free_port
from deployments.system.stack import Stack
from tasks.core.callers import mint_token
from tasks.core.jobs import JobType
from tests.support.burst import (
    Answer,
    Latency,
    Post,
    burst_plan,
    final_states,
    paced,
    post_burst,
    read_history,
    wait_final,
)

#: The burst of the issue, and its pace.
SCANS, BACKUPS, UPDATES = 300, 60, 6
CLIENTS, SPREAD = 10, 10.0
#: Servers the jobs go to, in turn (each scan and backup server is the same sshd).
SERVERS = 10
#: Posts each way before the measured rounds (`Bench.warm`).
WARM = 20
#: The shim's p95 over Prefect's own create's, same burst, same run.
RATIO_GOAL = 1.1
LOCKED = "database is locked"
#: The job each pool's posts enqueue, and the name of its id parameter.
JOBS = {
    "scan": (JobType.SCAN_QUICK, "scan_id"),
    "backup": (JobType.BACKUP_MANUAL, "backup_id"),
    "update": (JobType.UPDATE_SERVER, "update_id"),
}


@dataclass
class Round:
    """What one burst did."""

    #: Through the shim (False: straight to Prefect).
    shim: bool
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
    def how(self) -> str:
        return "shim" if self.shim else "Prefect's create_flow_run"


@dataclass
class Bench:
    """The stack and inventory every round uses."""

    stack: Stack
    token: str
    plan: list[Post]
    #: The user of `token`, whose servers the plan's are.
    user: str
    #: Each pool's deployment, as the shim knows it.
    deployments: dict[str, UUID]

    def send(self, posts: list[Post], *, shim: bool, spread: float = SPREAD) -> list[Answer]:
        """`posts` through the shim, or straight to Prefect (`direct_burst`)."""
        if not shim:
            return asyncio.run(direct_burst(self.stack, self.deployments, posts, self.user, spread))
        assert self.stack.shim_url is not None
        return post_burst(self.stack.shim_url, self.token, posts, clients=CLIENTS, spread=spread)

    def warm(self, timeout: float) -> None:
        """A few posts each way and their runs: a fresh stack's first requests and runs
        (connections, caches, the fork servers' first forks) would land in one side's round."""
        for shim in (True, False):
            answers = self.send(self.plan[:WARM], shim=shim, spread=1.0)
            with self.stack.sync_client() as client:
                wait_final(client, [a.job_id for a in answers if a.job_id is not None], timeout)

    def round(self, timeout: float, *, shim: bool = True) -> Round:
        server_log = self.stack.logs_dir / "server.log"
        locked_before = _count(server_log, LOCKED)
        began = datetime.now(UTC)
        answers = self.send(self.plan, shim=shim)
        ids = [a.job_id for a in answers if a.job_id is not None]
        with self.stack.sync_client() as client:
            runs = wait_final(client, ids, timeout)
            ended = max(r.end_time or r.state.timestamp for r in runs if r.state is not None)
            # A minute of margin: a run still Running from before counts against the limit too.
            history = read_history(client, began - timedelta(minutes=1))
        errors = sorted({f"{a.status} {a.message}" for a in answers if a.job_id is None})
        return Round(
            shim,
            answers,
            Latency.of(answers),
            dict(final_states(runs)),
            history.peaks(),
            history.sent_back(),
            _count(server_log, LOCKED) - locked_before,
            (ended - began).total_seconds(),
            errors,
        )


def _parameters(post: Post, user: str) -> tuple[JobType, dict[str, Any]]:
    """The job and parameters the shim enqueues for `post` (api_shim/routes/servers.py)."""
    job_type, id_name = JOBS[post.pool]
    extra: dict[str, Any] = (
        {"options": BackupRequest().options().model_dump(mode="json")}
        if post.pool == "backup"
        else {}
    )
    return job_type, {
        "server_id": post.path.split("/")[3],
        id_name: str(uuid.uuid4()),
        "user_id": user,
        "job_type": job_type.value,
        **extra,
    }


async def direct_burst(
    stack: Stack,
    deployments: dict[str, UUID],
    posts: list[Post],
    user: str,
    spread: float = SPREAD,
) -> list[Answer]:
    """`posts` sent straight to Prefect as the shim sends them (`enqueue`, our own kind of
    key), paced as `post_burst` paces them; a failed create is an answer of status 0."""

    async with stack.client() as client:

        async def send(post: Post) -> Answer:
            job_type, parameters = _parameters(post, user)
            began = time.perf_counter()
            try:
                created = await enqueue(
                    client,
                    job_type,
                    parameters,
                    deployment_id=deployments[post.pool],
                    tags=[user_tag(user)],
                    idempotency_key=f"api:{user}:once:{uuid.uuid4()}",
                )
            except Exception as exc:
                return Answer(post, 0, time.perf_counter() - began, None, None, repr(exc))
            # Prefect answers a create with 201.
            return Answer(post, 201, time.perf_counter() - began, created.job_id, None, "")

        return await paced(posts, send, clients=CLIENTS, spread=spread)


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
    with stack.sync_client() as client:
        deployments = {
            pool: client.read_deployment_by_name(CATALOGUE[job].deployment.full_name).id
            for pool, (job, _) in JOBS.items()
        }
    return Bench(stack, token, plan, user, deployments), target


def measure(
    pairs: int,
    scale: float,
    worker_type: str | None = None,
    report: Callable[[int, Round], None] | None = None,
) -> list[tuple[Round, Round]]:
    """`pairs` of rounds (through the shim, straight to Prefect), one after the other on one
    stack, who goes first swapped each pair; `report(number, round)` after each round."""
    with tempfile.TemporaryDirectory(prefix="mm-bench-burst-") as tmp:
        bench, target = start(Path(tmp), worker_type, scale)
        try:
            bench.warm(timeout=600)
            results = []
            for pair in range(pairs):
                done: dict[bool, Round] = {}
                for shim in (True, False) if pair % 2 == 0 else (False, True):
                    done[shim] = bench.round(timeout=1800, shim=shim)
                    if report is not None:
                        report(2 * pair + len(done), done[shim])
                results.append((done[True], done[False]))
            return results
        finally:
            bench.stack.stop()
            target.stop()


def rows(pairs: list[tuple[Round, Round]]) -> list[Row]:
    ratios = [shim.latency.p95 / prefect.latency.p95 for shim, prefect in pairs]
    ratio = median(ratios)
    jobs = len(pairs[0][0].answers)

    def p95s(rounds: list[Round]) -> str:
        return ", ".join(f"{r.latency.p95 * 1000:.0f}" for r in rounds)

    out = [
        Row(
            f"enqueue p95 during the burst ({jobs} jobs from {CLIENTS} clients over"
            f" {SPREAD:.0f} s, runs executing; pairs of alternating rounds: {len(pairs)}; median"
            " of the pairs' ratios)",
            f"shim p95 {p95s([s for s, _ in pairs])} ms",
            f"Prefect's create_flow_run p95 {p95s([p for _, p in pairs])} ms",
            f"{ratio:.2f}x",
            f"<= {RATIO_GOAL}x",
            ratio <= RATIO_GOAL,
        )
    ]
    return out + round_rows([r for pair in pairs for r in pair])


def round_rows(results: list[Round], first: int = 1) -> list[Row]:
    """A row per round: its latencies, and whether it ran clean (no 5xx, none crashed, the
    pools' limits held)."""
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
                f"burst round {number}, {result.how}: {jobs} jobs from {CLIENTS} clients over"
                f" {SPREAD:.0f} s",
                f"enqueue p50 {result.latency.p50 * 1000:.0f} ms, "
                f"p95 {result.latency.p95 * 1000:.0f} ms; {result.server_errors} 5xx; "
                f"{completed}/{jobs} completed, {crashed} crashed; most running "
                + ", ".join(f"{p} {n}" for p, n in pools.items()),
                f"max {result.latency.max * 1000:.0f} ms; {result.locked} lock errors; "
                f"{result.sent_back} sent back by a deployment limit; "
                f"all ended in {result.seconds:.0f} s",
                "-",
                "no 5xx, none crashed, never > " + "/".join(str(n) for n in limits.values()),
                result.server_errors == 0 and crashed == 0 and completed == jobs and held,
            )
        )
    return out


def run(config: BenchConfig) -> list[Row]:
    return rows(measure(*_shape(config)))


def _shape(config: BenchConfig) -> tuple[int, float]:
    """Pairs of rounds and the burst's scale: `--quick` is one pair of a fifth of it."""
    return config.rounds or (1 if config.quick else 2), 0.2 if config.quick else 1.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a fifth of the burst, 1 pair")
    parser.add_argument("--rounds", type=int, default=None, help="pairs of rounds (default 2)")
    parser.add_argument("--worker-type", default=None, help="forkserver (default) or process")
    args = parser.parse_args()
    os.environ.setdefault("DO_NOT_TRACK", "1")
    config = BenchConfig(quick=args.quick, rounds=args.rounds)
    print(f"{now()}; {machine()}; load {load()}", flush=True)

    def report(number: int, result: Round) -> None:
        print(
            f"round {number} ({now()}, load {load()}): finals {result.finals}; peaks {result.peaks}"
        )
        for error in result.errors[:5]:
            print(f"  answer: {error[:300]}")
        print(table(round_rows([result], number)), flush=True)

    pairs = measure(*_shape(config), args.worker_type, report)
    print(table(rows(pairs)))
    print(f"load after: {load()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
