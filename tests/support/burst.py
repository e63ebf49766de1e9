"""A burst of jobs through the API shim, and what it left in Prefect's state history.

Shared by tests/integration/test_burst.py and bench/burst.py:

    plan = burst_plan(scan_servers, backup_servers, update_servers, scans=300, backups=60)
    answers = post_burst(stack.shim_url, token, plan, clients=10, spread=10.0)
    runs = wait_final(client, [a.job_id for a in answers if a.job_id], timeout=600)
    peaks = read_history(client, since=began).peaks()   # {"scan": 5, "pool:scan": 5, ...}
"""

from __future__ import annotations

import asyncio
import random
import statistics
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar
from uuid import UUID

import httpx
from prefect.client.orchestration import SyncPrefectClient
from prefect.client.schemas.filters import (
    DeploymentFilter,
    DeploymentFilterId,
    FlowRunFilter,
    FlowRunFilterId,
    FlowRunFilterStartTime,
)
from prefect.client.schemas.objects import FlowRun, State, StateType

from deployments.control.catalogue import ALL_DEPLOYMENTS

#: Prefect accepts at most this many runs per read.
PAGE = 200

T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True)
class Post:
    """One request of a burst: `POST path` with `body`."""

    #: The job's pool: scan, backup or update.
    pool: str
    path: str
    body: dict[str, Any]


@dataclass(frozen=True)
class Answer:
    """The shim's answer to one `Post`."""

    post: Post
    status: int
    #: Seconds from sending the request to the whole answer.
    seconds: float
    job_id: UUID | None
    retry_after: str | None
    message: str


def burst_plan(
    scan_servers: Sequence[UUID],
    backup_servers: Sequence[UUID],
    update_servers: Sequence[UUID] = (),
    *,
    scans: int,
    backups: int,
    updates: int = 0,
    seed: int = 7,
) -> list[Post]:
    """The posts of a burst, kinds shuffled together (as users would send them), servers in turn."""
    posts = [
        Post("scan", f"/api/servers/{scan_servers[i % len(scan_servers)]}/scan",
             {"scan_type": "quick"})
        for i in range(scans)
    ] + [
        Post("backup", f"/api/servers/{backup_servers[i % len(backup_servers)]}/backup", {})
        for i in range(backups)
    ] + [
        Post("update", f"/api/servers/{update_servers[i % len(update_servers)]}/update", {})
        for i in range(updates)
    ]  # fmt: skip
    random.Random(seed).shuffle(posts)
    return posts


def post_burst(
    base_url: str, token: str, posts: Sequence[Post], *, clients: int = 10, spread: float = 10.0
) -> list[Answer]:
    """Send `posts` from `clients` concurrent HTTP clients, request i due at i/len * `spread` s.

    A client that falls behind the schedule sends at once; at most `clients` requests are in
    flight. Answers come back in the order of `posts`.
    """
    return asyncio.run(_post_burst(base_url, token, posts, clients, spread))


async def _post_burst(
    base_url: str, token: str, posts: Sequence[Post], clients: int, spread: float
) -> list[Answer]:
    http = httpx.AsyncClient(
        base_url=base_url, headers={"Authorization": f"Bearer {token}"}, timeout=60
    )
    async with http:
        return await paced(posts, lambda post: _send(http, post), clients=clients, spread=spread)


async def paced(
    items: Sequence[T], send: Callable[[T], Awaitable[R | None]], *, clients: int, spread: float
) -> list[R]:
    """`send` each of `items` from `clients` concurrent senders, item i due at i/len * `spread`
    s; a sender that falls behind sends at once. Results come back in the order of `items`,
    without the None ones."""
    results: list[R | None] = [None] * len(items)
    turn = iter(range(len(items)))
    began = time.monotonic()

    async def sender() -> None:
        for index in turn:
            due = began + spread * index / len(items)
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            results[index] = await send(items[index])

    await asyncio.gather(*(sender() for _ in range(clients)))
    return [r for r in results if r is not None]


async def _send(http: httpx.AsyncClient, post: Post) -> Answer:
    sent = time.perf_counter()
    try:
        response = await http.post(post.path, json=post.body)
    except httpx.HTTPError as exc:
        return Answer(post, 0, time.perf_counter() - sent, None, None, repr(exc))
    seconds = time.perf_counter() - sent
    try:
        body = response.json()
    except ValueError:
        body = {"message": response.text[:200]}
    data = body.get("data") or {}
    job_id = data.get("jobId") if response.status_code == 202 else None
    return Answer(
        post,
        response.status_code,
        seconds,
        UUID(job_id) if job_id else None,
        response.headers.get("Retry-After"),
        str(body.get("message")),
    )


def quantile(values: Iterable[float], q: float) -> float:
    """The `q` quantile (0..1) of `values`, nearest rank."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


@dataclass(frozen=True)
class Latency:
    p50: float
    p95: float
    max: float
    mean: float

    @classmethod
    def of(cls, answers: Sequence[Answer]) -> Latency:
        seconds = [a.seconds for a in answers]
        return cls(
            quantile(seconds, 0.5),
            quantile(seconds, 0.95),
            max(seconds),
            statistics.fmean(seconds),
        )


def read_runs(client: SyncPrefectClient, ids: Sequence[UUID]) -> list[FlowRun]:
    """The flow runs of `ids`, in pages Prefect accepts."""
    runs: list[FlowRun] = []
    for start in range(0, len(ids), PAGE):
        chunk = list(ids[start : start + PAGE])
        runs += client.read_flow_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=chunk)), limit=len(chunk)
        )
    return runs


def wait_final(
    client: SyncPrefectClient, ids: Sequence[UUID], timeout: float, poll: float = 1.0
) -> list[FlowRun]:
    """The runs of `ids` once every one is in a final state; TimeoutError names the others.

    Each look reads only the runs not yet seen final: reading hundreds of runs every second
    costs the server CPU the runs under test need.
    """
    deadline = time.monotonic() + timeout
    final: dict[UUID, FlowRun] = {}
    while True:
        runs = read_runs(client, [i for i in ids if i not in final])
        final.update((r.id, r) for r in runs if r.state is not None and r.state.is_final())
        open_ = [r for r in runs if r.state is None or not r.state.is_final()]
        if len(final) == len(set(ids)):
            return [final[i] for i in ids]
        if time.monotonic() > deadline:
            states = dict(final_states(open_))
            missing = len(set(ids)) - len(final) - len(open_)
            if missing:
                states["not found"] = missing
            raise TimeoutError(
                f"{len(set(ids)) - len(final)} of {len(ids)} runs not final after "
                f"{timeout:.0f} s: {states}"
            )
        time.sleep(poll)


def running_spans(states: Iterable[State]) -> list[tuple[datetime, datetime | None]]:
    """Each stretch of a run's history in Running: from that state to the next one (None:
    still Running). A retry in the same process shows as two stretches."""
    ordered = sorted(states, key=lambda s: s.timestamp)
    spans: list[tuple[datetime, datetime | None]] = []
    for index, state in enumerate(ordered):
        if state.type is StateType.RUNNING:
            following = ordered[index + 1].timestamp if index + 1 < len(ordered) else None
            spans.append((state.timestamp, following))
    return spans


def most_at_once(spans: Iterable[tuple[datetime, datetime | None]]) -> int:
    """The most spans open at one instant; an end and a start at one instant do not overlap."""
    events: list[tuple[datetime, int]] = []
    for start, end in spans:
        events.append((start, 1))
        if end is not None:
            events.append((end, -1))
    current = peak = 0
    for _, delta in sorted(events, key=lambda e: (e[0], e[1])):
        current += delta
        peak = max(peak, current)
    return peak


@dataclass
class History:
    """Every run of our deployments that started in a window, with its states."""

    runs: list[FlowRun]
    #: Deployment name (`scan`, `maintenance`...) by run id.
    deployment: dict[UUID, str]
    #: Pool name by run id.
    pool: dict[UUID, str]
    states: dict[UUID, list[State]]

    def peaks(self) -> dict[str, int]:
        """The most runs Running at once, by deployment name and by pool (`pool:NAME`)."""
        spans: dict[str, list[tuple[datetime, datetime | None]]] = {}
        for run in self.runs:
            mine = running_spans(self.states[run.id])
            spans.setdefault(self.deployment[run.id], []).extend(mine)
            spans.setdefault(f"pool:{self.pool[run.id]}", []).extend(mine)
        return {name: most_at_once(found) for name, found in sorted(spans.items())}

    def sent_back(self) -> int:
        """Runs a deployment concurrency limit sent back (AwaitingConcurrencySlot) at least once."""
        return sum(
            any(s.name == "AwaitingConcurrencySlot" for s in states)
            for states in self.states.values()
        )


def read_history(client: SyncPrefectClient, since: datetime) -> History:
    """Every run of our deployments that first ran after `since`, and its state history."""
    by_id = {client.read_deployment_by_name(d.full_name).id: d for d in ALL_DEPLOYMENTS}
    runs: list[FlowRun] = []
    while True:
        page = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(start_time=FlowRunFilterStartTime(after_=since)),
            deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=list(by_id))),
            limit=PAGE,
            offset=len(runs),
        )
        runs += page
        if len(page) < PAGE:
            break
    runs = [r for r in runs if r.deployment_id in by_id]
    return History(
        runs,
        {r.id: by_id[r.deployment_id].name for r in runs if r.deployment_id},
        {r.id: by_id[r.deployment_id].queue.name for r in runs if r.deployment_id},
        {r.id: client.read_flow_run_states(r.id) for r in runs},
    )


def final_states(runs: Iterable[FlowRun]) -> Counter[str]:
    """How many runs ended in each state (by name: Completed, Failed, Crashed...)."""
    return Counter(str(r.state.name) if r.state else "none" for r in runs)
