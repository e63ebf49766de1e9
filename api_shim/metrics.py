"""Prometheus metrics of the shim (GET /metrics) and the queues' health verdict.

Queue gauges are set from count queries at scrape time, so they are as fresh as the scrape, and
so is the corrupt-backup gauge, from the repositories' manifests; counters and histograms live in
this process and restart with it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Mapping
from pathlib import Path

from prometheus_client import Counter, Gauge, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api_shim.schemas import Health, HealthStatus, QueueCounts
from tasks.archive_checks import CorruptCounter

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


#: The shim's reader of the repositories' corrupt backups (it remembers unchanged servers), the
#: servers it has set a series for, and the lock two scrapes at once take turns with.
_CORRUPT = CorruptCounter()
_CORRUPT_SERIES: set[str] = set()
_CORRUPT_LOCK = threading.Lock()


def record_corrupt_backups(roots: Iterable[Path]) -> None:
    """Set the corrupt-backup gauge of each server with backups in `roots` (0 included, so an
    alert clears); a server whose backups are all gone loses its series. Reads files: call it
    in a thread."""
    with _CORRUPT_LOCK:
        counts = {str(server_id): n for server_id, n in _CORRUPT.counts(roots).items()}
        for server_id, count in counts.items():
            BACKUPS_CORRUPT.labels(server_id).set(count)
        for gone in _CORRUPT_SERIES - counts.keys():
            BACKUPS_CORRUPT.remove(gone)
        _CORRUPT_SERIES.clear()
        _CORRUPT_SERIES.update(counts)


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
