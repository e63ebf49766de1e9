"""One CSRF token fetch at a time per Prefect client.

The server checks a CSRF token on every request that changes something (the stack turns the
protection on, `Stack.server_environment`). Prefect's async HTTP client fetches its token when it
has none or it expired, in the request that needs it, without a lock: N requests sent at once
fetch N tokens for one client id, the server keeps only the last, and the others are refused
with 403 "Invalid CSRF token"; the client then fetches again (at once again) and backs off 2, 4,
8 ... s. The shim's queue counts (two dozen queries at once) hit that on their first call and
timed out. With one fetch at a time the others wait for it and reuse its token.

Applied by the processes that send changes concurrently: the shim, the fork-server worker and
the runs forked from it. A process of Prefect's stock worker sends its first change alone.
"""

from __future__ import annotations

import asyncio
from typing import Any

# Private to Prefect: the async HTTP client that every PrefectClient sends through, and its
# token step. tests/unit/test_csrf.py fails loudly if an upgrade renames either.
from prefect.client.base import PrefectHttpxAsyncClient

_original = PrefectHttpxAsyncClient._add_csrf_headers


async def _one_fetch_at_a_time(self: PrefectHttpxAsyncClient, request: Any) -> None:
    # Created on first use: a client lives in one event loop, where its lock then lives too.
    lock: asyncio.Lock = self.__dict__.setdefault("_mm_csrf_lock", asyncio.Lock())
    async with lock:
        await _original(self, request)


def serialize_token_fetches() -> None:
    """Make every Prefect async client of this process fetch its CSRF token once; idempotent."""
    PrefectHttpxAsyncClient._add_csrf_headers = _one_fetch_at_a_time  # type: ignore[method-assign]
