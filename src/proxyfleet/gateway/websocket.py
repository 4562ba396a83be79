"""WebSocket passthrough: a client upgrade under ``/v1`` becomes an upstream WebSocket on a
leased backend, held for the life of the connection; frames are relayed both ways as they come.
"""

from __future__ import annotations

import asyncio
import contextlib
import json

import aiohttp

from proxyfleet.errors import GatewayError, NoHealthyBackend, UpstreamError
from proxyfleet.gateway.asgi import Receive, Scope, Send
from proxyfleet.gateway.rules import upstream_headers
from proxyfleet.pool import Lease, Pool
from proxyfleet.pool.backend import public_url

__all__ = ["WebSocketRelay", "reject"]

_TRY_NEXT = 1013  # "try again later"
_ABNORMAL = 1011


def _ws_url(base_url: str, tail: str) -> str:
    url = base_url + tail
    if url.startswith("https://"):
        return "wss://" + url[len("https://") :]
    return "ws://" + url[len("http://") :]


class WebSocketRelay:
    def __init__(
        self,
        session: aiohttp.ClientSession,
        pool: Pool,
        *,
        strip_client_auth: bool,
        retries: int = 2,
    ) -> None:
        self._session = session
        self._pool = pool
        self._strip = strip_client_auth
        self._retries = retries

    async def relay(self, scope: Scope, receive: Receive, send: Send, tail: str, rid: str) -> None:
        first = await receive()
        if first["type"] != "websocket.connect":
            return
        tried: list[str] = []
        error: GatewayError | None = None
        for _ in range(self._retries + 1):
            try:
                lease = await self._pool.acquire(rid, exclude=tried)
            except GatewayError as exc:
                await reject(scope, send, error or exc, rid)
                return
            async with lease:
                upstream = await self._connect(scope, lease, tail, rid)
                if isinstance(upstream, GatewayError):
                    error = upstream
                    tried.append(lease.backend.id)
                    continue
                async with upstream:
                    await send(
                        {
                            "type": "websocket.accept",
                            "subprotocol": upstream.protocol,
                            "headers": [(b"x-request-id", rid.encode())],
                        }
                    )
                    await self._pump(receive, send, upstream, lease)
                return
        await reject(scope, send, error or NoHealthyBackend("no backend"), rid)

    async def _connect(
        self, scope: Scope, lease: Lease, tail: str, rid: str
    ) -> aiohttp.ClientWebSocketResponse | GatewayError:
        backend = lease.backend
        headers = {
            k: v
            for k, v in upstream_headers(
                scope["headers"], backend.headers, rid, strip_client_auth=self._strip
            ).items()
            if not k.lower().startswith("sec-websocket-")
        }
        try:
            return await self._session.ws_connect(
                _ws_url(backend.base_url, tail),
                headers=headers,
                protocols=tuple(scope.get("subprotocols") or ()),
                autoping=True,
                heartbeat=None,
                max_msg_size=0,
            )
        except aiohttp.WSServerHandshakeError as exc:
            if exc.status >= 500:
                lease.fail()
            return UpstreamError(f"backend {backend.id} refused the WebSocket ({exc.status})")
        except (TimeoutError, aiohttp.ClientError, OSError):
            lease.fail()
            return UpstreamError(
                f"backend {backend.id} at {public_url(backend.base_url)} is unreachable"
            )

    async def _pump(
        self, receive: Receive, send: Send, upstream: aiohttp.ClientWebSocketResponse, lease: Lease
    ) -> None:
        tasks = [
            asyncio.ensure_future(_client_to_upstream(receive, upstream)),
            asyncio.ensure_future(_upstream_to_client(send, upstream, lease)),
        ]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError, OSError, aiohttp.ClientError):
                    await task


async def _client_to_upstream(receive: Receive, upstream: aiohttp.ClientWebSocketResponse) -> None:
    while True:
        message = await receive()
        if message["type"] == "websocket.disconnect":
            await upstream.close(code=message.get("code") or 1000)
            return
        if message.get("text") is not None:
            await upstream.send_str(message["text"])
        elif message.get("bytes") is not None:
            await upstream.send_bytes(message["bytes"])


async def _upstream_to_client(
    send: Send, upstream: aiohttp.ClientWebSocketResponse, lease: Lease
) -> None:
    async for message in upstream:
        if message.type is aiohttp.WSMsgType.TEXT:
            await send({"type": "websocket.send", "text": message.data})
        elif message.type is aiohttp.WSMsgType.BINARY:
            await send({"type": "websocket.send", "bytes": message.data})
        elif message.type is aiohttp.WSMsgType.ERROR:
            lease.fail()
            break
    code = upstream.close_code or _ABNORMAL
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
        headers.append((b"retry-after", str(max(1, round(error.retry_after))).encode()))
    await send(
        {"type": "websocket.http.response.start", "status": error.status, "headers": headers}
    )
    await send({"type": "websocket.http.response.body", "body": body})


async def _close(send: Send, code: int, reason: str) -> None:
    with contextlib.suppress(OSError, RuntimeError):
        await send({"type": "websocket.close", "code": code, "reason": reason[:120]})
