"""``provider: chat`` over WebSocket: ``response.create`` frames in, Responses events out.

Each ``response.create`` is one turn: translated to a streamed Chat Completions request on a
backend leased for that turn only, its chunks translated to events, one event per frame. A bad
frame or a failed upstream gives an ``error`` event and the connection stays open for the next.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import MutableMapping
from typing import Any

from proxyfleet._asgi import Receive, Scope, Send
from proxyfleet.errors import GatewayError, UpstreamError, UpstreamTimeout
from proxyfleet.gateway.failover import RETRY_STATUSES, Failover, Retry
from proxyfleet.gateway.forward import Abandon
from proxyfleet.gateway.rules import forwarded_headers
from proxyfleet.pool import Lease
from proxyfleet.providers.request import TranslateOptions, dumps, responses_to_chat
from proxyfleet.providers.response import ResponseShape, StreamTranslator
from proxyfleet.providers.sse import SSEParser
from proxyfleet.transports import Exchange, Request, Transport

__all__ = ["ChatWebSocket"]

_IDENTITY = {"accept-encoding": "identity"}


class _Gone(Exception):
    """The client closed the WebSocket."""


def _error(code: str, message: str) -> dict[str, Any]:
    return {
        "type": "error",
        "error": {
            "type": "invalid_request_error" if code.startswith("inv") else "server_error",
            "code": code,
            "message": message,
        },
    }


class ChatWebSocket:
    def __init__(
        self,
        failover: Failover,
        options: TranslateOptions,
        *,
        strip: bool,
        abandon: Abandon | None = None,
    ) -> None:
        self._failover = failover
        self._options = options
        self._strip = strip
        self._abandon = abandon or Abandon()

    async def serve(self, scope: Scope, receive: Receive, send: Send, rid: str) -> None:
        if (await receive())["type"] != "websocket.connect":
            return
        await send({"type": "websocket.accept", "headers": [(b"x-request-id", rid.encode())]})
        turn = 0
        with contextlib.suppress(_Gone):
            while True:
                message = await receive()
                if message["type"] == "websocket.disconnect":
                    return
                params = _params(message)
                if isinstance(params, str):
                    await _send(send, _error("invalid_request", params))
                    continue
                turn += 1
                await self._turn(scope, send, params, f"{rid}-{turn}")

    async def _turn(self, scope: Scope, send: Send, params: dict[str, Any], rid: str) -> None:
        params = dict(params, stream=True)
        try:
            chat = responses_to_chat(params, self._options)
            headers = forwarded_headers(
                scope["headers"], rid, strip_client_auth=self._strip, extra=_IDENTITY
            )
            request = Request("POST", "/chat/completions", headers, dumps(chat.body))

            async def attempt(lease: Lease, transport: Transport, last: bool) -> None:
                await self._attempt(send, params, rid, request, lease, transport, last)

            await self._failover.run(rid, attempt)
        except GatewayError as error:
            await _send(send, _error(error.code, error.message))

    async def _attempt(
        self,
        send: Send,
        params: dict[str, Any],
        rid: str,
        request: Request,
        lease: Lease,
        transport: Transport,
        last: bool,
    ) -> None:
        backend = lease.backend
        try:
            exchange = await transport.handle(backend, request)
        except UpstreamError as exc:
            lease.fail()
            if isinstance(exc, UpstreamTimeout):
                lease.cut()
            raise Retry(exc) from exc
        try:
            if exchange.status >= 500:
                lease.fail()
            if exchange.status in RETRY_STATUSES and not last:
                raise Retry(UpstreamError(f"backend {backend.id} answered {exchange.status}"))
            if exchange.status != 200:
                body = (await exchange.read()).decode("utf-8", "replace")
                await _send(
                    send,
                    _error("upstream_error", f"backend answered {exchange.status}: {body[:500]}"),
                )
                return
            shape = ResponseShape.of(params, f"resp_{rid}", int(time.time()))
            await self._stream(send, exchange, StreamTranslator(shape), lease)
        except _Gone:  # the client closed the WebSocket mid-turn: settle its backend first
            await self._abandon.settle(exchange, lease)
            raise
        finally:
            exchange.close()

    async def _stream(
        self, send: Send, exchange: Exchange, translator: StreamTranslator, lease: Lease
    ) -> None:
        for event in translator.start():
            await _send(send, event)
        parser = SSEParser()
        try:
            while (chunk := await exchange.next_chunk()) is not None:
                for data in parser.feed(chunk):
                    if data.strip() != "[DONE]":
                        for event in translator.feed(json.loads(data)):
                            await _send(send, event)
        except (UpstreamError, ValueError) as exc:
            lease.fail()
            if isinstance(exc, UpstreamTimeout):
                lease.cut()
            for event in translator.fail(
                "server_error", f"backend broke off: {type(exc).__name__}"
            ):
                await _send(send, event)
            return
        for event in translator.finish():
            await _send(send, event)


def _params(message: MutableMapping[str, Any]) -> dict[str, Any] | str:
    """The create parameters of a ``response.create`` frame, or why the frame is refused."""
    text = message.get("text")
    if text is None and message.get("bytes") is not None:
        text = message["bytes"].decode("utf-8", "replace")
    try:
        frame = json.loads(text or "")
    except json.JSONDecodeError:
        return "frame is not JSON"
    if not isinstance(frame, dict) or frame.get("type") != "response.create":
        return "expected a response.create frame"
    inner = frame.get("response")
    if isinstance(inner, dict):
        return inner
    return {k: v for k, v in frame.items() if k != "type"}


async def _send(send: Send, event: dict[str, Any]) -> None:
    try:
        await send({"type": "websocket.send", "text": json.dumps(event, separators=(",", ":"))})
    except (OSError, RuntimeError) as exc:
        raise _Gone() from exc
