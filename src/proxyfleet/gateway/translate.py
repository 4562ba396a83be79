"""``provider: chat``: deliver a Chat Completions answer to a Responses API client.

The request was translated by :mod:`proxyfleet.providers.request`; this transform turns the
upstream's 200 answer into a ``response`` object, or its SSE chunks into Responses events as
they arrive. A stream that breaks ends with ``response.failed``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import Any

from proxyfleet._asgi import Send
from proxyfleet.errors import UpstreamError, UpstreamTimeout
from proxyfleet.gateway.recording import Recording
from proxyfleet.gateway.rules import response_headers
from proxyfleet.logs import event
from proxyfleet.pool import Lease
from proxyfleet.providers.response import ResponseShape, StreamTranslator, chat_to_response
from proxyfleet.providers.sse import SSEParser, encode_event
from proxyfleet.transports import Exchange

__all__ = ["ChatToResponses", "chunk_of_completion"]

_log = logging.getLogger("proxyfleet.providers")
_DROP = frozenset({b"content-type", b"content-encoding"})


def chunk_of_completion(chat: Mapping[str, Any]) -> dict[str, Any]:
    """A whole completion as one stream chunk (for a provider that ignored ``stream``)."""
    choices = chat.get("choices") or [{}]
    message = choices[0].get("message") or {}
    calls = [dict(call, index=n) for n, call in enumerate(message.get("tool_calls") or [])]
    delta = {"content": message.get("content"), "tool_calls": calls}
    return {
        "choices": [{"index": 0, "delta": delta, "finish_reason": choices[0].get("finish_reason")}],
        "usage": chat.get("usage"),
    }


class ChatToResponses:
    upstream_headers: Mapping[str, str] = {"accept-encoding": "identity"}

    def __init__(self, shape: ResponseShape, stream: bool) -> None:
        self._shape = shape
        self._stream = stream

    async def deliver(
        self, send: Send, exchange: Exchange, lease: Lease, recording: Recording
    ) -> None:
        rid = recording.rid
        headers = [
            (k, v) for k, v in response_headers(exchange.headers, rid.encode()) if k not in _DROP
        ]
        sse = exchange.content_type == b"text/event-stream"
        if not self._stream:
            body = await exchange.read()
            try:
                payload = json.dumps(chat_to_response(_json(body), self._shape)).encode()
            except ValueError as exc:
                lease.fail()
                raise UpstreamError(
                    f"backend {lease.backend.id} answered something that is not a chat completion"
                ) from exc
            headers += [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(payload)).encode()),
            ]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send({"type": "http.response.body", "body": payload})
            return
        headers.append((b"content-type", b"text/event-stream"))
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        translator = StreamTranslator(self._shape)
        await _send_events(send, translator.start())
        try:
            if sse:
                await self._translate_stream(send, exchange, translator)
            else:  # a provider that answered a stream request with one JSON body
                chunk = chunk_of_completion(_json(await exchange.read()))
                await _send_events(send, translator.feed(chunk))
        except (UpstreamError, ValueError) as exc:
            lease.fail()
            if isinstance(exc, UpstreamTimeout):
                lease.cut()
            recording.broken = "timeout" if isinstance(exc, UpstreamTimeout) else "upstream_error"
            event(
                _log,
                "stream_translation_failed",
                logging.WARNING,
                backend=lease.backend.id,
                request_id=rid,
                error=type(exc).__name__,
            )
            events = translator.fail(
                "server_error",
                f"backend {lease.backend.id} broke off mid-stream ({type(exc).__name__})",
            )
            await _send_events(send, events, last=True)
            return
        await _send_events(send, translator.finish(), last=True)

    async def _translate_stream(
        self, send: Send, exchange: Exchange, translator: StreamTranslator
    ) -> None:
        parser = SSEParser()
        while (chunk := await exchange.next_chunk()) is not None:
            for data in parser.feed(chunk):
                if data.strip() == "[DONE]":
                    continue
                events = translator.feed(_json(data.encode()))
                if events:
                    await _send_events(send, events)
        for data in parser.close():
            if data.strip() != "[DONE]":
                await _send_events(send, translator.feed(_json(data.encode())))


async def _send_events(send: Send, events: list[dict[str, Any]], last: bool = False) -> None:
    body = b"".join(encode_event(e) for e in events)
    await send({"type": "http.response.body", "body": body, "more_body": not last})


def _json(body: bytes) -> dict[str, Any]:
    data = json.loads(body)
    if not isinstance(data, dict):
        raise ValueError("expected a JSON object from the upstream")
    return data
