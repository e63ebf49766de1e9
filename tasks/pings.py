"""Pings of a server's `backup.ping_url` at the start, success and failure of each backup, for
people who watch their backups with Healthchecks or Uptime Kuma.

Which service a URL is for is told by its path: Uptime Kuma's push URLs are `/api/push/<token>`;
every other URL is taken as a Healthchecks ping URL (hc-ping.com's or a self-hosted one's).

| event   | Healthchecks                            | Uptime Kuma (push)              |
| ------- | --------------------------------------- | ------------------------------- |
| start   | GET URL/start?rid=JOB                   | nothing                         |
| success | GET URL?rid=JOB                         | GET URL?status=up&msg=...       |
| failure | POST URL/fail?rid=JOB, the reason (body) | GET URL?status=down&msg=REASON |

Uptime Kuma has no "started": a push is a heartbeat, and an `up` at the start would say the
backup worked before it did. `rid` (Healthchecks' run id, a UUID) is the job's id, so that
Healthchecks pairs a start with its end and measures the run.

A ping never fails a backup and never holds it up much: `TIMEOUT` seconds per try, `TRIES` tries
on a network error, a 5xx or a 429, then a warning in the job's log that names the event and
the URL's scheme and host only (the rest of a ping URL is its secret token).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from enum import StrEnum
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit
from uuid import UUID

import httpx

#: Seconds one try may take, connecting included.
TIMEOUT = 3.0
#: Tries of one ping in all (the first and its retries), and the pause between two.
TRIES = 3
PAUSE = 0.5
#: Characters of a failure reason sent: Healthchecks keeps 100 kB of a body, Uptime Kuma shows
#: the message in a list; the job's own record keeps the whole reason.
REASON_CHARS = 1000
KUMA_MESSAGE_CHARS = 200


class Event(StrEnum):
    """What a ping says of a backup."""

    #: The backup began (after the server was found in the inventory).
    START = "start"
    #: The archive is stored and verified.
    SUCCESS = "success"
    #: The backup failed, after the retries of its tasks.
    FAILURE = "failure"


@dataclass(frozen=True)
class Ping:
    """One HTTP request to make."""

    method: str
    url: str
    body: str | None = None


def is_uptime_kuma(url: str) -> bool:
    return "/api/push/" in urlsplit(url).path


def _with_query(url: str, **params: str) -> str:
    """`url` with `params` set in its query, replacing those of the same name, keeping others."""
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k not in params]
    return urlunsplit(parts._replace(query=urlencode([*query, *params.items()])))


def ping_for(url: str, event: Event, message: str = "", run_id: UUID | None = None) -> Ping | None:
    """The request that tells `url`'s service of `event`; None when the service has no such
    event (Uptime Kuma's start)."""
    if is_uptime_kuma(url):
        if event is Event.START:
            return None
        status = "up" if event is Event.SUCCESS else "down"
        msg = (message or ("OK" if event is Event.SUCCESS else "failed"))[:KUMA_MESSAGE_CHARS]
        return Ping("GET", _with_query(url, status=status, msg=msg))
    parts = urlsplit(url)
    suffix = {Event.START: "/start", Event.SUCCESS: "", Event.FAILURE: "/fail"}[event]
    target = urlunsplit(parts._replace(path=parts.path.rstrip("/") + suffix))
    if run_id is not None:
        target = _with_query(target, rid=str(run_id))
    if event is Event.FAILURE:
        return Ping("POST", target, message[:REASON_CHARS])
    return Ping("GET", target)


def redacted(url: str) -> str:
    """What a log may say of a ping URL: its scheme and host (the path holds the token)."""
    parts = urlsplit(url)
    host = parts.hostname or "?"
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}/..."


def _retryable(response: httpx.Response) -> bool:
    return response.status_code >= 500 or response.status_code == 429


def send(
    ping: Ping,
    logger: logging.Logger | logging.LoggerAdapter[logging.Logger],
    *,
    client: httpx.Client | None = None,
) -> bool:
    """Make the request, with retries; True when the service took it. Never raises."""
    problem = ""
    own = client is None
    http = client or httpx.Client(timeout=TIMEOUT)
    try:
        for attempt in range(TRIES):
            if attempt:
                time.sleep(PAUSE)
            try:
                response = http.request(ping.method, ping.url, content=ping.body)
            except httpx.HTTPError as exc:
                # The exception's text may quote the URL: its type only.
                problem = type(exc).__name__
                continue
            if response.is_success:
                return True
            problem = f"HTTP {response.status_code}"
            if not _retryable(response):
                break
    finally:
        if own:
            http.close()
    logger.warning(
        "ping %s to %s failed after %d tries (%s); the backup goes on",
        ping.method,
        redacted(ping.url),
        attempt + 1,
        problem,
    )
    return False


class Pings:
    """The pings of one backup run; without a URL, nothing is sent."""

    def __init__(
        self,
        url: str | None,
        logger: logging.Logger | logging.LoggerAdapter[logging.Logger],
        run_id: UUID | None = None,
    ) -> None:
        self.url = url
        self.logger = logger
        self.run_id = run_id

    def _send(self, event: Event, message: str = "") -> bool:
        if self.url is None:
            return False
        ping = ping_for(self.url, event, message, self.run_id)
        return ping is not None and send(ping, self.logger)

    def start(self) -> bool:
        return self._send(Event.START)

    def success(self, message: str) -> bool:
        return self._send(Event.SUCCESS, message)

    def failure(self, reason: str) -> bool:
        return self._send(Event.FAILURE, reason)
