"""The gateway's HTTP/1.1 server protocol: uvicorn's httptools protocol, with limits on every
read from a client and strict request parsing.

- A request head must arrive within ``server.header_timeout`` seconds and stay under
  ``server.max_header_bytes`` bytes and ``server.max_headers`` headers: else 408 or 431. A
  connection that sends nothing at all gets the same timeout.
- A request body may pause at most ``server.body_timeout`` seconds between two reads: else 408.
- The request line needs a version (HTTP/1.0 or 1.1; a bare line feed inside the target makes
  it an HTTP/0.9 line, refused); the target must be origin-form (``/path``, not ``//host/…``
  nor ``http://host/…``): else 400 ``invalid_path``. llhttp itself refuses bare line feeds in
  headers, obsolete line folding, and a Content-Length beside Transfer-Encoding.
- ``Upgrade`` to anything but a WebSocket is ignored, as RFC 9110 allows: the request is parsed
  on as plain HTTP/1.1, body included.
- An HTTP/1.0 client gets a response without a length close-delimited, never chunked.

Every refusal is an OpenAI-shaped JSON error, then the connection closes. None of this costs
the common request anything: timers are armed only while a head or a body is incomplete at
the end of a read.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any

import httptools
from uvicorn.protocols.http.httptools_impl import (
    STATUS_LINE,
    HttpToolsProtocol,
    RequestResponseCycle,
)

__all__ = ["Limits", "protocol_for"]

_FRAMING = frozenset({b"content-length", b"transfer-encoding"})
_LINGER = 2.0  # seconds a refused connection is still read from before it closes


@dataclass(frozen=True, slots=True)
class Limits:
    header_timeout: float = 30.0
    body_timeout: float = 30.0
    max_header_bytes: int = 64 * 1024
    max_headers: int = 100


class _Refused(Exception):
    """Raised inside a parser callback: answer ``status`` with ``code`` and close."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def _answer(status: int, code: str, message: str) -> bytes:
    kind = "invalid_request_error"
    body = json.dumps({"error": {"message": message, "type": kind, "code": code}}).encode()
    return b"".join(
        [
            STATUS_LINE[status],
            b"content-type: application/json\r\n",
            b"content-length: %d\r\n" % len(body),
            b"connection: close\r\n\r\n",
            body,
        ]
    )


def protocol_for(limits: Limits) -> type[GatewayProtocol]:
    """The protocol class uvicorn instantiates per connection, with these limits."""
    return type("GatewayProtocol", (GatewayProtocol,), {"limits": limits})


class _IgnoredUpgrade:
    """Parser callbacks for the rest of a request whose ``Upgrade`` we ignore: the repeated
    framing head says nothing new; the body and its end go to the connection's request."""

    def __init__(self, protocol: GatewayProtocol) -> None:
        self._protocol = protocol
        self._done = False
        self.on_body = protocol.on_body

    def on_message_begin(self) -> None:
        if self._done:  # the connection closes after this request: nothing more is read
            raise self._protocol._stop(0, "", "")

    def on_message_complete(self) -> None:
        self._done = True
        self._protocol._lingering = True  # drop what follows; the answer still goes out
        self._protocol.on_message_complete()


class GatewayProtocol(HttpToolsProtocol):
    limits = Limits()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._in_head = True  # between requests, or reading a head
        self._head_bytes = 0
        self._body_pending = False
        self._last_read = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._lingering = False
        self._refusal: _Refused | None = None  # raised inside a parser callback

    # -- reads ----------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm(self.limits.header_timeout)  # a connection that says nothing at all

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._lingering:
            return  # refused: what the client still sends is read and dropped (see _refuse)
        self._unset_keepalive_if_required()
        if self._in_head:
            end = data.find(b"\r\n\r\n")
            self._head_bytes += len(data) if end < 0 else end + 4
            if self._head_bytes > self.limits.max_header_bytes:
                self._refuse(
                    431,
                    "header_too_large",
                    f"the request head is larger than {self.limits.max_header_bytes} bytes "
                    "(server.max_header_bytes)",
                )
                return
        self._last_read = self.loop.time()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            if self._should_upgrade():
                self._disarm()
                self.handle_websocket_upgrade()
                return
            self._ignore_upgrade(data[int(exc.args[0]) :])
        except httptools.HttpParserCallbackError as exc:
            self._refused(exc)
        except httptools.HttpParserError as exc:
            self._refuse(400, "invalid_request", f"malformed HTTP request: {exc}")
        if self._timer is None and not self.transport.is_closing():
            if self._body_pending:
                self._arm(self.limits.body_timeout)
            elif self._head_bytes:
                self._arm(self.limits.header_timeout)

    def _refused(self, exc: httptools.HttpParserCallbackError) -> None:
        refused, self._refusal = self._refusal, None
        if refused is None:
            raise exc
        if refused.status:  # 0: stop reading, say nothing (see _IgnoredUpgrade)
            self._refuse(refused.status, refused.code, refused.message)

    def _stop(self, status: int, code: str, message: str) -> _Refused:
        """From inside a parser callback: what to raise to stop parsing and refuse."""
        self._refusal = _Refused(status, code, message)
        return self._refusal

    def _ignore_upgrade(self, rest: bytes) -> None:
        """An ``Upgrade`` we ignore: llhttp stopped at the end of the head, so a fresh parser
        takes the body behind a head that repeats only its framing; the connection closes
        after the response."""
        framing = [b"%s: %s\r\n" % (k, v) for k, v in self.headers if k in _FRAMING]
        self.cycle.keep_alive = False
        self.parser = httptools.HttpRequestParser(_IgnoredUpgrade(self))
        try:
            self.parser.feed_data(b"POST / HTTP/1.1\r\n" + b"".join(framing) + b"\r\n" + rest)
        except httptools.HttpParserCallbackError as exc:
            self._refused(exc)
        except httptools.HttpParserError as exc:
            self._refuse(400, "invalid_request", f"malformed HTTP request: {exc}")

    # -- parser callbacks -------------------------------------------------------------------
    def on_headers_complete(self) -> None:
        self._disarm()
        self._in_head = False
        self._body_pending = True
        version = self.parser.get_http_version()
        if version not in ("1.0", "1.1"):
            raise self._stop(400, "invalid_request", "the request line needs HTTP/1.0 or HTTP/1.1")
        target = self.url
        if (target[:1] != b"/" or target[:2] == b"//") and not (
            target == b"*" and self.parser.get_method() == b"OPTIONS"
        ):
            raise self._stop(
                400,
                "invalid_path",
                "the request target must be a path (/v1/…), not a URL or another host",
            )
        if len(self.headers) > self.limits.max_headers:
            raise self._stop(
                431,
                "too_many_headers",
                f"more than {self.limits.max_headers} request headers (server.max_headers)",
            )
        super().on_headers_complete()
        if version == "1.0" and self.cycle is not None:
            self.cycle.__class__ = _Http10Cycle  # a body without length ends with the connection

    def on_message_complete(self) -> None:
        self._body_pending = False
        if self._timer is not None:
            self._disarm()
        self._in_head = True
        self._head_bytes = 0
        if self.parser.should_upgrade() and not self._should_upgrade():
            return  # an Upgrade we ignore: its body comes next (see _ignore_upgrade)
        super().on_message_complete()

    # -- timers and refusals ------------------------------------------------------------------
    def _arm(self, seconds: float) -> None:
        self._disarm()
        self._timer = self.loop.call_later(seconds, self._expired)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _expired(self) -> None:
        self._timer = None
        if self.transport.is_closing() or self._lingering:
            return
        if self._body_pending:
            seconds = self.limits.body_timeout
            idle = self.loop.time() - self._last_read
            if self.flow.read_paused or idle < seconds:  # not reading yet, or new data came
                self._timer = self.loop.call_later(max(seconds - idle, 0.05), self._expired)
                return
            self._refuse(
                408,
                "request_timeout",
                f"the request body stalled for {seconds:g}s (server.body_timeout)",
            )
        elif self._in_head and (self._head_bytes or self.cycle is None):
            seconds = self.limits.header_timeout
            self._refuse(
                408,
                "request_timeout",
                f"the request head did not arrive within {seconds:g}s (server.header_timeout)",
            )

    def _refuse(self, status: int, code: str, message: str) -> None:
        """Answer with an error (unless a response of this request started) and close the
        connection; the request's handler, if one runs, sees the client gone.

        The close lingers: our side is shut for writing, and what the client still sends
        (the rest of a huge head, say) is read and dropped for up to ``_LINGER`` seconds, so
        that its kernel does not answer our answer with a reset before it was read."""
        self._disarm()
        cycle = self.cycle
        if cycle is None or cycle.response_complete or not cycle.response_started:
            self.transport.write(_answer(status, code, message))
        if cycle is not None and not cycle.response_complete:
            cycle.disconnected = True
            cycle.message_event.set()
        if self._lingering or not self.transport.can_write_eof():
            self.transport.close()
            return
        self._lingering = True
        self.transport.write_eof()
        self._timer = self.loop.call_later(_LINGER, self.transport.close)

    def send_400_response(self, msg: str) -> None:
        self._refuse(400, "invalid_request", msg)


class _Http10Cycle(RequestResponseCycle):
    """An HTTP/1.0 exchange: a response without a length is close-delimited."""

    _raw = False

    async def send(self, message: Any) -> None:
        if self.flow.write_paused and not self.disconnected:
            await self.flow.drain()
        if message["type"] == "http.response.start" and not self.response_started:
            headers = list(message.get("headers", []))
            framed = any(k.lower() == b"content-length" for k, _ in headers)
            status = message["status"]
            if not framed and self.scope["method"] != "HEAD" and status not in (204, 304):
                self._raw = True
                self._start_raw(status, headers)
                return
        if self._raw and message["type"] == "http.response.body":
            self._write_raw(message)
            return
        await super().send(message)

    def _start_raw(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        if self.disconnected:
            return
        self.response_started = True
        self.waiting_for_100_continue = False
        self.keep_alive = False
        lines = [STATUS_LINE[status]]
        for name, value in [*self.default_headers, *headers]:
            if name.lower() != b"connection":
                lines.append(name + b": " + value + b"\r\n")
        lines.append(b"connection: close\r\n\r\n")
        self.transport.write(b"".join(lines))

    def _write_raw(self, message: Any) -> None:
        if self.disconnected or self.response_complete:
            return
        body = message.get("body", b"")
        if body:
            self.transport.write(body)
        if not message.get("more_body", False):
            self.response_complete = True
            self.message_event.set()
            self.transport.close()
            self.on_response()
