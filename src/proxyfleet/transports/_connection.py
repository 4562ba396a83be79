"""One HTTP/1.1 connection to an upstream: an asyncio protocol driving an httptools parser.

A connection carries one request at a time (no pipelining). The body arrives through
``on_body`` into a buffer that the reader drains; reading is paused above a high-water mark so
a slow client never makes the gateway buffer an upstream's whole answer. What goes wrong is
raised as our own errors: :class:`~proxyfleet.errors.UpstreamClosed`,
:class:`~proxyfleet.errors.UpstreamProtocolError`, :class:`~proxyfleet.errors.UpstreamTimeout`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import cast

import httptools

from proxyfleet.errors import UpstreamClosed, UpstreamProtocolError, UpstreamTimeout

__all__ = ["Connection"]

_HIGH_WATER = 256 * 1024


class Connection(asyncio.Protocol):
    def __init__(self, loop: asyncio.AbstractEventLoop, on_lost: Callable[[Connection], None]):
        self._loop = loop
        self._on_lost = on_lost
        self.transport: asyncio.Transport | None = None
        self._parser = httptools.HttpResponseParser(self)
        self.closed = False
        self.idle_since = 0.0
        self.requests = 0
        self._read_timeout = 0.0
        self._last_data = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._reset()

    def _reset(self) -> None:
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.received_any = False
        self.complete = False
        self.keep_alive = False
        self.head_only = False
        self._headers_done: asyncio.Future[None] = self._loop.create_future()
        self._chunks: list[bytes] = []
        self._buffered = 0
        self._paused = False
        self._waiter: asyncio.Future[None] | None = None
        self._error: BaseException | None = None
        self._until_close = False

    # -- asyncio.Protocol ----------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        self.received_any = True
        self._last_data = self._loop.time()
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(UpstreamProtocolError("unexpected protocol upgrade"))
        except httptools.HttpParserError as exc:
            self._fail(UpstreamProtocolError(f"malformed HTTP answer: {exc}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if not self.complete and self._until_close and exc is None:
            self.complete = True  # a body without length or chunking ends with the connection
            self._wake()
        if not self.complete:
            self._fail(UpstreamClosed("upstream closed the connection mid-answer"))
        self._on_lost(self)

    # -- httptools callbacks -------------------------------------------------------------------
    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        self.status = self._parser.get_status_code()
        framed = any(
            name.lower() in (b"content-length", b"transfer-encoding") for name, _ in self.headers
        )
        self._until_close = not framed and self.status not in (204, 304)
        if not self._headers_done.done():
            self._headers_done.set_result(None)
        if self.head_only:
            self.complete = True  # a HEAD answer has no body whatever its length says
            self.keep_alive = False
            self._disarm()
            self._wake()

    def on_body(self, body: bytes) -> None:
        self._chunks.append(body)
        self._buffered += len(body)
        if self._buffered > _HIGH_WATER and not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        self.complete = True
        self.keep_alive = self._parser.should_keep_alive()
        self._disarm()
        self._wake()

    # -- used by the client -------------------------------------------------------------------
    def send(self, data: bytes, head_only: bool, read_timeout: float) -> None:
        """Write one request; the answer must keep coming with no silence over ``read_timeout``."""
        assert self.transport is not None
        if self.requests:
            self._reset()
        self.requests += 1
        self.head_only = head_only
        self._read_timeout = read_timeout
        self._last_data = now = self._loop.time()
        self._timer = self._loop.call_at(now + read_timeout, self._check_silence)
        self.transport.write(data)

    def _check_silence(self) -> None:
        """One timer per request, re-armed from the last byte seen (cheaper than a timeout per
        wait). Silence while reading is paused for a slow client is not the upstream's."""
        self._timer = None
        if self.complete or self.closed:
            return
        deadline = self._last_data + self._read_timeout
        if self._paused or self._loop.time() < deadline:
            start = self._loop.time() if self._paused else self._last_data
            self._timer = self._loop.call_at(start + self._read_timeout, self._check_silence)
            return
        self._fail(UpstreamTimeout(f"upstream silent for {self._read_timeout:g}s"))

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    async def headers_done(self) -> None:
        await self._headers_done

    async def next_chunk(self) -> bytes | None:
        """Body bytes received so far (at least one), or None at the end of the body."""
        while not self._chunks:
            if self.complete:
                return None
            if self._error is not None:
                raise self._error
            self._waiter = self._loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        data = self._chunks[0] if len(self._chunks) == 1 else b"".join(self._chunks)
        self._chunks.clear()
        self._buffered = 0
        if self._paused and self.transport is not None:
            self._paused = False
            self.transport.resume_reading()
        return data

    def close(self) -> None:
        self.closed = True
        self._disarm()
        if self.transport is not None:
            self.transport.abort()

    def _fail(self, error: BaseException) -> None:
        self._error = error
        self._disarm()
        if not self._headers_done.done():
            self._headers_done.set_exception(error)
            self._headers_done.exception()  # retrieved: nobody may be waiting yet
        self._wake()
        if self.transport is not None and not self.closed:
            self.closed = True
            self.transport.abort()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
