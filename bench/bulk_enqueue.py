"""Issue 20: one request that enqueues 300 quick scans, against 300 single requests.

    uv run python -m bench.bulk_enqueue [--quick] [--rounds N]

One embedded stack, every pool paused (only the creating of jobs is measured), an inventory of
300 servers of one user. Alternating rounds, the same 300 quick scans two ways:

- one `POST /api/servers/scan` with the 300 `serverIds`;
- 300 `POST /api/servers/:id/scan` from 10 concurrent clients (`tests/support/burst.py`), as
  a script that knows no bulk endpoint would send them.

Per round: the wall time from the first request to the last answer, and the Prefect server's
and the shim's CPU per job (from /proc). The ratio is the bulk wall time over the singles'.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
import uuid
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import httpx
import yaml

from bench.report import BenchConfig, Row, load, machine, now, table
from bench.run_cost import cpu_seconds
from deployments.system.local_target import LocalTarget, free_port
from deployments.system.stack import Stack
from tasks.core.callers import mint_token
from tests.support.burst import Post, post_burst

SERVERS = 300
CLIENTS = 10
USER = "bench-bulk"


@dataclass(frozen=True)
class Side:
    seconds: float
    failures: int
    server_ms: float
    shim_ms: float


def _round(stack: Stack, token: str, ids: list[str], bulk: bool) -> Side:
    assert stack.server is not None and stack.shim is not None and stack.shim_url is not None
    server_pid, shim_pid = stack.server.pid, stack.shim.pid
    assert server_pid is not None and shim_pid is not None
    before = cpu_seconds(server_pid), cpu_seconds(shim_pid)
    began = time.perf_counter()
    if bulk:
        answer = httpx.post(
            f"{stack.shim_url}/api/servers/scan",
            headers={"Authorization": f"Bearer {token}"},
            json={"serverIds": ids, "scan_type": "quick"},
            timeout=300,
        )
        data = answer.json()["data"] if answer.status_code == 202 else None
        failures = len(ids) - (data["enqueued"] if data else 0)
    else:
        posts = [Post("scan", f"/api/servers/{i}/scan", {"scan_type": "quick"}) for i in ids]
        # All at once (no pacing): the time it takes, not a rate.
        answers = post_burst(stack.shim_url, token, posts, clients=CLIENTS, spread=0.0)
        failures = sum(a.status != 202 for a in answers)
    seconds = time.perf_counter() - began
    time.sleep(2.0)  # the events of the last creates
    return Side(
        seconds,
        failures,
        (cpu_seconds(server_pid) - before[0]) * 1000 / len(ids),
        (cpu_seconds(shim_pid) - before[1]) * 1000 / len(ids),
    )


def measure(rounds: int, servers: int) -> list[tuple[Side, Side]]:
    """`rounds` pairs (bulk, singles), alternating, on one stack."""
    env = {"PREFECT_SERVER_SERVICES_LATE_RUNS_ENABLED": "false"}
    with tempfile.TemporaryDirectory(prefix="mm-bench-bulk-") as tmp:
        work = Path(tmp)
        target = LocalTarget(home=work / "target").start()
        ids = [str(uuid.uuid4()) for _ in range(servers)]
        entries = [target.server_entry(i, f"s-{n}", owners=[USER]) for n, i in enumerate(ids)]
        inventory = work / "inventory.yaml"
        inventory.write_text(yaml.safe_dump({"servers": entries}, sort_keys=False))
        stack = Stack(
            work / "stack",
            port=free_port(),
            inventory=inventory,
            api_port=free_port(),
            ui=False,
            extra_env=env,
        )
        stack.start()
        try:
            assert stack.jwt_secret is not None and stack.shim_url is not None
            admin = mint_token(stack.jwt_secret, "bench-admin", "admin", ttl=timedelta(hours=1))
            httpx.post(
                f"{stack.shim_url}/api/queues/pause",
                headers={"Authorization": f"Bearer {admin}"},
                json={},
                timeout=30,
            ).raise_for_status()
            token = mint_token(stack.jwt_secret, USER, "user", ttl=timedelta(hours=1))
            _round(stack, token, ids[:20], True)  # warm both paths
            _round(stack, token, ids[:20], False)
            return [
                (_round(stack, token, ids, True), _round(stack, token, ids, False))
                for _ in range(rounds)
            ]
        finally:
            stack.stop()
            target.stop()


def rows(pairs: list[tuple[Side, Side]], servers: int) -> list[Row]:
    out = []
    for number, (bulk, singles) in enumerate(pairs, 1):
        out.append(
            Row(
                f"bulk enqueue round {number}: {servers} quick scans, pools paused",
                f"one request: {bulk.seconds:.2f} s, {bulk.failures} failed; per job: server "
                f"{bulk.server_ms:.0f} ms CPU, shim {bulk.shim_ms:.1f} ms CPU",
                f"{servers} requests from {CLIENTS} clients: {singles.seconds:.2f} s, "
                f"{singles.failures} failed; server {singles.server_ms:.0f} ms, "
                f"shim {singles.shim_ms:.1f} ms CPU a job",
                f"{bulk.seconds / singles.seconds:.2f}x",
                "< 1x, none failed",
                bulk.seconds < singles.seconds and bulk.failures == singles.failures == 0,
            )
        )
    return out


def run(config: BenchConfig) -> list[Row]:
    servers = 60 if config.quick else SERVERS
    return rows(measure(config.rounds or (1 if config.quick else 2), servers), servers)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="60 servers, 1 round")
    parser.add_argument("--rounds", type=int, default=None)
    args = parser.parse_args()
    os.environ.setdefault("DO_NOT_TRACK", "1")
    print(f"{now()}; {machine()}; load {load()}", flush=True)
    servers = 60 if args.quick else SERVERS
    pairs = measure(args.rounds or (1 if args.quick else 2), servers)
    print(table(rows(pairs, servers)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
