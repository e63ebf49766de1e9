"""Prometheus metrics of the shim (GET /metrics) and the queues' health verdict.

Queue gauges are set from count queries at scrape time, so they are as fresh as the scrape, and
so are the backup gauges, from the repositories' manifests and the inventory's schedules; the job
counters are read from Prefect (api_shim/finished_jobs.py); the others live in this process and
restart with it. Every name follows Prometheus' conventions: base units (`_seconds`, `_bytes`),
`_timestamp_seconds` for a time, `_total` for a counter.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Mapping
from datetime import timedelta
from pathlib import Path
from uuid import UUID

from prometheus_client import Counter, Gauge, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api_shim.schemas import Health, HealthStatus, QueueCounts
from tasks.backup_facts import FactsReader
from tasks.core.freshness import backup_max_age
from tasks.core.inventory import Inventory

#: Waiting jobs in one queue beyond which the queues count as degraded.
MAX_WAITING = 100
#: Share of failed jobs among all of a queue's jobs beyond which the queues count as degraded.
MAX_FAILED_SHARE = 0.10

QUEUE_JOBS = Gauge("mm_queue_jobs", "Jobs per queue and job state.", ["queue", "state"])
QUEUE_WORKERS = Gauge("mm_queue_workers_online", "Live workers per queue (pool).", ["queue"])
JOBS_ENQUEUED = Counter(
    "mm_jobs_enqueued_total", "Jobs enqueued through the API, by job type.", ["job_type"]
)
JOB_OPERATIONS = Counter(
    "mm_job_operations_total",
    "Retries, cancels, deletes and cleans done through the API.",
    ["operation"],
)
BACKUPS_CORRUPT = Gauge(
    "mm_backup_corrupt_archives",
    "Backups whose archive a check found missing or not matching its manifest, per server.",
    ["server_id"],
)
#: The labels of every per-server backup series: the id, and the name to read it by.
SERVER_LABELS = ["server_id", "server"]
BACKUP_LAST = Gauge(
    "mm_backup_last_completed_timestamp_seconds",
    "When the server's last completed backup finished (Unix time); no series: none completed.",
    SERVER_LABELS,
)
BACKUP_LAST_SIZE = Gauge(
    "mm_backup_last_completed_size_bytes",
    "Bytes of the server's last completed backup as stored (compressed, encrypted).",
    SERVER_LABELS,
)
BACKUP_LAST_DURATION = Gauge(
    "mm_backup_last_completed_duration_seconds",
    "Seconds the server's last completed backup took, from its start to its verified end.",
    SERVER_LABELS,
)
BACKUP_MAX_AGE = Gauge(
    "mm_backup_max_age_seconds",
    "How old a scheduled server's last completed backup may be: its schedule's longest gap plus"
    " MM_NOTIFY_STALE_GRACE_SECONDS (tasks/core/freshness.py).",
    SERVER_LABELS,
)
REQUEST_SECONDS = Histogram(
    "mm_http_request_seconds",
    "Seconds the shim took to answer, by route and status.",
    ["method", "route", "status"],
)
PREFECT_SECONDS = Histogram(
    "mm_prefect_call_seconds",
    "Seconds the shim's calls to the Prefect API took, by operation.",
    ["operation"],
)


class RequestTiming:
    """Observes `REQUEST_SECONDS` for each HTTP request, by method, route and status.

    A pure ASGI middleware: Starlette's `BaseHTTPMiddleware` (`@app.middleware("http")`) costs
    a task group and two memory streams per request, about a millisecond of CPU here.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        began = time.perf_counter()
        status = 500

        async def send_and_note(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        finally:
            # The router sets the matched route in the scope it shares with us.
            path = getattr(scope.get("route"), "path", "unmatched")
            REQUEST_SECONDS.labels(scope["method"], path, str(status)).observe(
                time.perf_counter() - began
            )


def record_queues(counts: Mapping[str, QueueCounts], workers: Mapping[str, int]) -> None:
    for queue, entry in counts.items():
        for state, value in entry.model_dump(exclude={"total"}).items():
            QUEUE_JOBS.labels(queue, state).set(value)
    for queue, online in workers.items():
        QUEUE_WORKERS.labels(queue).set(online)


class Series:
    """The label sets a gauge was given at the last scrape, so that one no longer set (a server
    gone, or renamed) is removed instead of exporting its last value for ever."""

    def __init__(self, gauge: Gauge) -> None:
        self.gauge = gauge
        self._labels: set[tuple[str, ...]] = set()

    def set_all(self, values: Mapping[tuple[str, ...], float]) -> None:
        for labels, value in values.items():
            self.gauge.labels(*labels).set(value)
        for gone in self._labels - values.keys():
            self.gauge.remove(*gone)
        self._labels = set(values)


#: The shim's reader of the repositories (it remembers unchanged servers), and the lock two
#: scrapes at once take turns with.
_FACTS = FactsReader()
_FACTS_LOCK = threading.Lock()
_CORRUPT = Series(BACKUPS_CORRUPT)
_LAST = Series(BACKUP_LAST)
_LAST_SIZE = Series(BACKUP_LAST_SIZE)
_LAST_DURATION = Series(BACKUP_LAST_DURATION)
_MAX_AGE = Series(BACKUP_MAX_AGE)


def record_backups(roots: Iterable[Path], names: Mapping[UUID, str]) -> None:
    """Set the corrupt-backup gauge of each server with backups in `roots` (0 included, so an
    alert clears) and the last completed backup's gauges of each that has one; a server whose
    backups are all gone loses its series. `names`: the inventory's, else the manifests' names
    label the series. Reads files: call it in a thread."""
    with _FACTS_LOCK:
        facts = _FACTS.facts(roots)
        _CORRUPT.set_all({(str(server_id),): f.corrupt for server_id, f in facts.items()})
        last = {
            (str(server_id), names.get(server_id, f.last.server_name)): f.last
            for server_id, f in facts.items()
            if f.last is not None
        }
        _LAST.set_all({labels: b.finished_at.timestamp() for labels, b in last.items()})
        _LAST_SIZE.set_all({labels: b.size for labels, b in last.items()})
        _LAST_DURATION.set_all({labels: b.duration for labels, b in last.items()})


async def record_max_ages(inventory: Inventory, grace: timedelta) -> None:
    """Set `mm_backup_max_age_seconds` of each scheduled server (`backup_max_age`, the rule the
    notifications share); a server without a schedule has no series, one never backed up has
    this one alone, which the alert rules look for."""
    ages: dict[tuple[str, ...], float] = {}
    for server in inventory.servers:
        age = await backup_max_age(server, grace)
        if age is not None:
            ages[(str(server.id), server.name)] = age.total_seconds()
    _MAX_AGE.set_all(ages)


def verdict(counts: Mapping[str, QueueCounts], workers: Mapping[str, int]) -> Health:
    """Degraded when a queue has too many waiting or failed jobs, or a pool no live worker."""
    problems = []
    for queue, entry in counts.items():
        if entry.waiting > MAX_WAITING:
            problems.append(f"{queue}: {entry.waiting} jobs waiting (more than {MAX_WAITING})")
        if entry.total and entry.failed > MAX_FAILED_SHARE * entry.total:
            share = entry.failed / entry.total
            problems.append(f"{queue}: {share:.0%} of jobs failed (more than 10 %)")
    for queue, online in workers.items():
        if online == 0:
            problems.append(f"{queue}: no live worker")
    if problems:
        return Health(status=HealthStatus.DEGRADED, message="; ".join(problems))
    return Health(status=HealthStatus.HEALTHY, message="All queues operating normally")
