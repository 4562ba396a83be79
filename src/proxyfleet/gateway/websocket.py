"""WebSocket upgrades: under ``/v1`` a client's WebSocket becomes an upstream channel on a
leased backend, held for the life of the connection, with frames relayed both ways as they come
(passthrough); with ``provider: chat``, ``/v1/responses`` is served turn by turn by
:mod:`.translate_ws` instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import TYPE_CHECKING

from proxyfleet._asgi import Receive, Scope, Send, retry_after
from proxyfleet.errors import GatewayError, NotFound, UpstreamError, UpstreamRefused
from proxyfleet.gateway.admission import Admission
from proxyfleet.gateway.auth import ClientAuth
from proxyfleet.gateway.failover import Failover, Retry
from proxyfleet.gateway.rules import forwarded_headers, header, request_id, upstream_path
from proxyfleet.pool import Lease
from proxyfleet.transports import Channel, Request, Transport

if TYPE_CHECKING:
    from proxyfleet.gateway.translate_ws import ChatWebSocket

__all__ = ["WebSocketRelay", "WebSocketRoutes", "reject"]

_TRY_NEXT = 1013  # "try again later"
_ABNORMAL = 1011


class WebSocketRoutes:
    """Every WebSocket upgrade: client auth, the path, the in-flight limit, then a handler."""

    def __init__(
        self,
        relay: WebSocketRelay,
        chat: ChatWebSocket | None,
        *,
        auth: ClientAuth,
        admission: Admission,
    ) -> None:
        self._relay = relay
        self._chat = chat
        self._auth = auth
        self._admission = admission

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope["path"]
        rid = request_id(header(scope, b"x-request-id"))
        try:
            self._auth.authorize(scope)
            if not (path.startswith("/v1/") or path == "/v1"):
                raise NotFound(f"no WebSocket route at {path}")
            tail = upstream_path(path, scope.get("raw_path"), scope["query_string"])
            self._admission.enter()
        except GatewayError as error:
            await receive()  # websocket.connect
            await reject(scope, send, error)
            return
        try:
            if self._chat is not None and tail == "/responses":
                await self._chat.serve(scope, receive, send, rid)
            else:
                await self._relay.relay(scope, receive, send, tail, rid)
        finally:
            self._admission.leave()


class WebSocketRelay:
    def __init__(self, failover: Failover, *, strip_client_auth: bool) -> None:
        self._failover = failover
        self._strip = strip_client_auth

    async def relay(self, scope: Scope, receive: Receive, send: Send, tail: str, rid: str) -> None:
        first = await receive()
        if first["type"] != "websocket.connect":
            return
        headers = forwarded_headers(scope["headers"], rid, strip_client_auth=self._strip)
        request = Request("GET", tail, headers)
        subprotocols = tuple(scope.get("subprotocols") or ())

        async def attempt(lease: Lease, transport: Transport, last: bool) -> None:
            try:
                channel = await transport.connect(lease.backend, request, subprotocols)
            except UpstreamRefused as exc:
                if exc.upstream_status >= 500:
                    lease.fail()
                raise Retry(exc) from exc
            except UpstreamError as exc:
                lease.fail()
                raise Retry(exc) from exc
            try:
                await send(
                    {
                        "type": "websocket.accept",
                        "subprotocol": channel.subprotocol,
                        "headers": [(b"x-request-id", rid.encode())],
                    }
                )
                await _pump(receive, send, channel, lease)
            finally:
                await channel.close()

        try:
            await self._failover.run(rid, attempt)
        except GatewayError as error:
            await reject(scope, send, error, rid)


async def _pump(receive: Receive, send: Send, channel: Channel, lease: Lease) -> None:
    tasks = [
        asyncio.ensure_future(_client_to_upstream(receive, channel)),
        asyncio.ensure_future(_upstream_to_client(send, channel, lease)),
    ]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, OSError, UpstreamError):
                await task


async def _client_to_upstream(receive: Receive, channel: Channel) -> None:
    while True:
        message = await receive()
        if message["type"] == "websocket.disconnect":
            await channel.close(message.get("code") or 1000)
            return
        if message.get("text") is not None:
            await channel.send(message["text"])
        elif message.get("bytes") is not None:
            await channel.send(message["bytes"])


async def _upstream_to_client(send: Send, channel: Channel, lease: Lease) -> None:
    try:
        while (message := await channel.receive()) is not None:
            if isinstance(message, str):
                await send({"type": "websocket.send", "text": message})
            else:
                await send({"type": "websocket.send", "bytes": message})
    except UpstreamError:
        lease.fail()
    code = channel.close_code or _ABNORMAL
    await _close(send, code if code != 1006 else _ABNORMAL, "upstream closed")


async def reject(scope: Scope, send: Send, error: GatewayError, rid: str | None = None) -> None:
    """Refuse an upgrade: an HTTP answer in the OpenAI error shape where the server can send
    one (the ASGI ``websocket.http.response`` extension), else a close frame."""
    if "websocket.http.response" not in (scope.get("extensions") or {}):
        await _close(send, 1008 if error.status < 500 else _TRY_NEXT, error.message)
        return
    body = json.dumps(error.body()).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if rid:
        headers.append((b"x-request-id", rid.encode()))
    if error.retry_after is not None:
        headers.append((b"retry-after", retry_after(error.retry_after)))
    await send(
        {"type": "websocket.http.response.start", "status": error.status, "headers": headers}
    )
    await send({"type": "websocket.http.response.body", "body": body})


async def _close(send: Send, code: int, reason: str) -> None:
    with contextlib.suppress(OSError, RuntimeError):
        await send({"type": "websocket.close", "code": code, "reason": reason[:120]})
