"""Small ASGI helpers shared by the gateway and the MCP routes: types, JSON answers, errors in
the OpenAI shape, bounded body reads."""

from __future__ import annotations

import json
import math
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from proxyfleet.errors import ClientGone, GatewayError, PayloadTooLarge

__all__ = [
    "Message",
    "Receive",
    "Scope",
    "Send",
    "lifespan",
    "read_body",
    "retry_after",
    "send_error",
    "send_json",
    "sse_error",
]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

_JSON = b"application/json"


def _dumps(data: object) -> bytes:
    return json.dumps(data, separators=(",", ":")).encode()


async def send_json(
    send: Send,
    status: int,
    data: object,
    rid: bytes | None = None,
    extra: list[tuple[bytes, bytes]] | None = None,
) -> None:
    body = _dumps(data)
    headers = [(b"content-type", _JSON), (b"content-length", str(len(body)).encode())]
    if rid is not None:
        headers.append((b"x-request-id", rid))
    if extra:
        headers += extra
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def send_error(send: Send, error: GatewayError, rid: bytes | None = None) -> None:
    extra = []
    if error.retry_after is not None:
        extra.append((b"retry-after", retry_after(error.retry_after)))
    if error.status == 426:  # Upgrade Required names what to upgrade to (RFC 9110 §15.5.22)
        extra.append((b"upgrade", b"websocket"))
    await send_json(send, error.status, error.body(), rid, extra)


def retry_after(seconds: float) -> bytes:
    """A ``Retry-After`` value: whole seconds, rounded up (never sooner than said), at least 1."""
    return str(max(1, math.ceil(seconds))).encode()


def sse_error(error: GatewayError) -> bytes:
    """An SSE event a client can parse when a stream breaks after it started."""
    return b"event: error\ndata: " + _dumps(error.body()) + b"\n\n"


def content_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


async def read_body(scope: Scope, receive: Receive, limit: int) -> bytes:
    """The whole request body, refusing more than ``limit`` bytes (413). A client that leaves
    before its body is complete is :class:`ClientGone`: a partial body never goes anywhere."""
    declared = content_length(scope)
    if declared is not None and declared > limit:
        raise PayloadTooLarge(f"request body of {declared} bytes exceeds the {limit}-byte limit")
    message = await receive()
    if message["type"] == "http.disconnect":
        raise ClientGone()
    body = message.get("body", b"")
    if not message.get("more_body"):
        if len(body) > limit:
            raise PayloadTooLarge(f"request body exceeds the {limit}-byte limit")
        return body  # type: ignore[no-any-return]
    parts = [body]
    size = len(body)
    while message.get("more_body"):
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone()
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"request body exceeds the {limit}-byte limit")
        parts.append(chunk)
    return b"".join(parts)


async def lifespan(
    receive: Receive,
    send: Send,
    start: Callable[[], Awaitable[None]],
    stop: Callable[[], Awaitable[None]],
) -> None:
    """The ASGI lifespan protocol around ``start`` and ``stop``."""
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            try:
                await start()
            except Exception as exc:
                await send({"type": "lifespan.startup.failed", "message": str(exc)})
                raise
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await stop()
            await send({"type": "lifespan.shutdown.complete"})
            return
