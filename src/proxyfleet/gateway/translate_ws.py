"""``provider: chat`` over WebSocket: ``response.create`` frames in, Responses events out.

Each ``response.create`` is one turn: translated to a streamed Chat Completions request on a
backend leased for that turn only, its chunks translated to events, one event per frame. A turn
naming a ``previous_response_id`` of this connection gets that conversation in front of its new
items (:mod:`.turns`); a warm-up (``"generate": false``) is answered here, with no backend. A bad
frame or a failed upstream gives an ``error`` event with the ``status`` a client acts on (the
HTTP status the same failure would have), and the connection stays open for the next turn.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import MutableMapping
from typing import Any

from proxyfleet._asgi import Receive, Scope, Send
from proxyfleet.errors import BadRequest, GatewayError, UpstreamError, UpstreamTimeout
from proxyfleet.gateway.failover import RETRY_STATUSES, Failover, Retry
from proxyfleet.gateway.forward import Abandon
from proxyfleet.gateway.rules import forwarded_headers
from proxyfleet.gateway.turns import MemoryLimits, Turn, TurnMemory
from proxyfleet.pool import Lease
from proxyfleet.providers.request import TranslateOptions, dumps, responses_to_chat
from proxyfleet.providers.response import ResponseShape, StreamTranslator
from proxyfleet.providers.sse import SSEParser
from proxyfleet.transports import Exchange, Request, Transport

__all__ = ["ChatWebSocket"]

_IDENTITY = {"accept-encoding": "identity"}


class _Gone(Exception):
    """The client closed the WebSocket."""


def _error(error: GatewayError, param: str | None = None) -> dict[str, Any]:
    """An ``error`` frame: the HTTP status the same failure would have had, and the OpenAI
    error object (a client reads ``status`` to decide: retry, resend, or report)."""
    return {
        "type": "error",
        "status": error.status,
        "error": {
            "type": error.error_type,
            "code": error.code,
            "message": error.message,
            "param": param,
        },
    }


def _upstream_error(status: int, body: str) -> GatewayError:
    """A provider's refusal as the client should see it: a request the provider refused (4xx:
    too long, bad parameters, rate limited) keeps its status; the provider failing, or refusing
    the backend's own credentials, is 502."""
    message = f"backend answered {status}: {body[:500]}"
    if 400 <= status < 500 and status not in (401, 403, 407):
        error: GatewayError = BadRequest(message, code="upstream_error")
        error.status = status
        return error
    return UpstreamError(message, code="upstream_error")


class ChatWebSocket:
    def __init__(
        self,
        failover: Failover,
        options: TranslateOptions,
        *,
        strip: bool,
        abandon: Abandon | None = None,
        memory: MemoryLimits | None = None,
    ) -> None:
        self._failover = failover
        self._options = options
        self._strip = strip
        self._abandon = abandon or Abandon()
        self._memory = memory or MemoryLimits()

    async def serve(self, scope: Scope, receive: Receive, send: Send, rid: str) -> None:
        if (await receive())["type"] != "websocket.connect":
            return
        await send({"type": "websocket.accept", "headers": [(b"x-request-id", rid.encode())]})
        memory = TurnMemory(self._memory)  # this connection's own turns, gone when it closes
        count = 0
        with contextlib.suppress(_Gone):
            while True:
                message = await receive()
                if message["type"] == "websocket.disconnect":
                    return
                params = _params(message)
                if isinstance(params, str):
                    await _send(send, _error(BadRequest(params)))
                    continue
                count += 1
                turn_rid = f"{rid}-{count}"
                try:
                    turn = memory.resolve(params)
                except GatewayError as error:
                    await _send(send, _error(error, "previous_response_id"))
                    continue
                if turn.params.get("generate") is False:
                    await self._warm_up(send, turn, turn_rid, memory)
                else:
                    await self._turn(scope, send, turn, turn_rid, memory)

    async def _warm_up(self, send: Send, turn: Turn, rid: str, memory: TurnMemory) -> None:
        """``"generate": false``: the client opens its session (the Codex CLI does, with the
        whole prompt and tools) and wants only a response id to continue from. Answered
        here: no backend is leased, nothing is billed."""
        response_id = f"resp_{rid}"
        translator = StreamTranslator(ResponseShape.of(turn.params, response_id, int(time.time())))
        for event in [*translator.start(), *translator.finish()]:
            await _send(send, event)
        memory.remember(response_id, turn, [])

    async def _turn(
        self, scope: Scope, send: Send, turn: Turn, rid: str, memory: TurnMemory
    ) -> None:
        params = dict(turn.params, stream=True)
        response_id = f"resp_{rid}"
        try:
            chat = responses_to_chat(params, self._options)
            handshake = [h for h in scope["headers"] if not h[0].startswith(b"sec-websocket-")]
            headers = forwarded_headers(
                handshake, rid, strip_client_auth=self._strip, extra=_IDENTITY
            )
            request = Request("POST", "/chat/completions", headers, dumps(chat.body))

            async def attempt(lease: Lease, transport: Transport, last: bool) -> None:
                output = await self._attempt(send, params, rid, request, lease, transport, last)
                if output is not None:
                    memory.remember(response_id, turn, output)

            await self._failover.run(rid, attempt)
        except GatewayError as error:
            await _send(send, _error(error))

    async def _attempt(
        self,
        send: Send,
        params: dict[str, Any],
        rid: str,
        request: Request,
        lease: Lease,
        transport: Transport,
        last: bool,
    ) -> list[dict[str, Any]] | None:
        """One try on one backend; the answer's output items when it completed."""
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
                await _send(send, _error(_upstream_error(exchange.status, body)))
                return None
            shape = ResponseShape.of(params, f"resp_{rid}", int(time.time()))
            translator = StreamTranslator(shape)
            if await self._stream(send, exchange, translator, lease):
                return translator.output
            return None
        except _Gone:  # the client closed the WebSocket mid-turn: settle its backend first
            await self._abandon.settle(exchange, lease)
            raise
        finally:
            exchange.close()

    async def _stream(
        self, send: Send, exchange: Exchange, translator: StreamTranslator, lease: Lease
    ) -> bool:
        """The answer as events; whether it ended (completed or incomplete), not broke off."""
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
            return False
        for event in translator.finish():
            await _send(send, event)
        return True


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
