"""Request bodies the shim reads: JSON only, and at most `max_body_bytes` of it.

A pure ASGI middleware, so a too large body is refused before FastAPI parses any of it:
413 on its `Content-Length`, or once a chunked body passes the limit; 415 for a body that is
not `application/json`; 400 for one that is not UTF-8, which JSON on a network must be
(RFC 8259, section 8.1): FastAPI would answer "There was an error parsing the body", which names
nothing. All answers are in the `{success, message, data}` envelope.
"""

from __future__ import annotations

import json
from collections.abc import Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api_shim.schemas import ErrorEnvelope


class BodyGuard:
    """Refuse bodies over `limit()` bytes (413), bodies that are not JSON (415) and JSON that is
    not UTF-8 (400)."""

    def __init__(self, app: ASGIApp, limit: Callable[[], int]) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        limit = self.limit()
        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            await _refuse(send, 413, _too_large(limit))
            return
        chunks: list[bytes] = []
        size = 0
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                await _refuse(send, 413, _too_large(limit))
                return
            chunks.append(chunk)
            more = message.get("more_body", False)
        media_type = headers.get("content-type", "").split(";")[0].strip().lower()
        if size and not _is_json(media_type):
            shown = media_type or "none"
            await _refuse(send, 415, f"Content-Type must be application/json, not {shown}")
            return
        body = b"".join(chunks)
        try:
            body.decode("utf-8")
        except UnicodeDecodeError as exc:
            await _refuse(
                send, 400, f"request body is not UTF-8 (byte {exc.start}): send UTF-8 JSON"
            )
            return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)


def _is_json(media_type: str) -> bool:
    return media_type == "application/json" or (
        media_type.startswith("application/") and media_type.endswith("+json")
    )


def _too_large(limit: int) -> str:
    return f"request body too large: the limit is {limit} bytes"


async def _refuse(send: Send, status: int, message: str) -> None:
    body = json.dumps(ErrorEnvelope(message=message).model_dump(mode="json")).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
