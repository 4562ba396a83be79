"""A client session of an MCP route and the exchanges in flight on it.

A session owns one upstream (a stdio child here) and routes what it says: a response goes to
the exchange (the POST) waiting for its id; anything else the server sends (notifications, its
own requests) goes to the oldest open exchange, else to the client's GET stream, else waits in
a bounded backlog for one. Sessions never share an upstream, so nothing crosses between them.

Both transports keep their requests the same way: on the legacy SSE transport an exchange's
messages go to the session's one stream instead of a POST's answer, but its requests are still
waited for, counted in flight, answered with an error when the session ends, and bounded by
``request_timeout``: a request unanswered by then gets a JSON-RPC error (``REQUEST_TIMEOUT``),
the server is sent ``notifications/cancelled`` for it, and its late answer is dropped.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import enum
import time
from collections.abc import Callable, Iterable
from typing import Any, Protocol

from proxyfleet.errors import UpstreamGone
from proxyfleet.mcpproxy.jsonrpc import (
    REQUEST_TIMEOUT,
    SERVER_ERROR,
    Kind,
    Message,
    cancelled,
    error_body,
)

__all__ = ["Exchange", "Session", "SessionState", "Upstream"]


class Upstream(Protocol):
    """A session's upstream: a stdio child, or a session on a streamable-HTTP server."""

    pid: int | None
    stopping: bool
    spoke: bool  # it has said something of its own: its server did start
    on_message: Callable[[Message], None]
    on_exit: Callable[[Any], None]

    @property
    def alive(self) -> bool: ...
    @property
    def label(self) -> str: ...
    def send(self, raw: bytes) -> None: ...
    def describe_exit(self) -> str: ...
    async def stop(self, timeout: float) -> None: ...


_BACKLOG = 1000  # server messages kept for a GET stream that is not open yet


class SessionState(enum.Enum):
    ACTIVE = "active"
    DEAD = "dead"  # its upstream died
    CLOSED = "closed"  # ended by the client, idle timeout or shutdown


class Exchange:
    """Requests waiting for their responses: one POST's, whose ``queue`` yields the messages to
    send, then None when every response has come; or, given a ``sink`` (the legacy transport),
    one message POST's, whose messages go to the session's stream, which it never ends."""

    __slots__ = ("_sink", "pending", "queue", "timer")

    def __init__(self, ids: Iterable[Any], sink: Callable[[bytes], None] | None = None) -> None:
        self.pending = set(ids)
        self.queue: asyncio.Queue[bytes | None] = asyncio.Queue()
        self.timer: asyncio.TimerHandle | None = None  # its request_timeout
        self._sink = sink

    def put(self, raw: bytes, answered: Any = None, final: bool = False) -> None:
        if self._sink is None:
            self.queue.put_nowait(raw)
        else:
            self._sink(raw)
        if final:
            self.pending.discard(answered)
            if not self.pending and self._sink is None:
                self.queue.put_nowait(None)

    def settle(self) -> None:
        """Nothing more is waited for: its timer goes."""
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None


class Session:
    def __init__(
        self,
        session_id: str,
        client: str,
        child: Upstream | None,
        *,
        legacy: bool = False,
        request_timeout: float | None = None,
        route: str = "",
    ) -> None:
        self.id = session_id
        self.legacy = legacy  # the SSE transport: everything the server says goes to ``stream``
        self.client = client
        self.child = child
        self.request_timeout = request_timeout  # seconds a request may wait for its answer
        self.route = route
        self.timeouts = 0  # requests that got no answer in time
        self.created = time.time()
        self.last_activity = time.monotonic()
        self.messages_in = 0  # client → server
        self.messages_out = 0  # server → client
        self.state = SessionState.ACTIVE
        self.ended_reason: str | None = None
        self.ended_at: float | None = None
        self._exchanges: dict[Any, Exchange] = {}
        self._open: list[Exchange] = []  # exchanges still running, oldest first
        self.stream: asyncio.Queue[bytes | None] | None = None  # the GET stream
        self._backlog: collections.deque[bytes] = collections.deque(maxlen=_BACKLOG)
        # a stateless session's way to give its child back once its one exchange is answered
        # (before that answer is sent: the client's next request may follow right after it)
        self.release: Callable[[], None] | None = None

    # -- client → server -----------------------------------------------------------------
    def submit(self, messages: list[Message]) -> Exchange | None:
        """Send a POST's messages upstream; the exchange to answer when it holds requests (on
        the legacy transport None: its answers go to the stream)."""
        requests = [m.id for m in messages if m.kind is Kind.REQUEST]
        exchange = None
        if requests:
            exchange = Exchange(requests, self._to_stream if self.legacy else None)
            for ident in requests:
                self._exchanges[ident] = exchange
            self._open.append(exchange)
            if self.request_timeout is not None:
                exchange.timer = asyncio.get_running_loop().call_later(
                    self.request_timeout, self._expire, exchange, self.request_timeout
                )
        assert self.child is not None
        try:
            for message in messages:
                self.child.send(message.raw)
                self.messages_in += 1
        except UpstreamGone:
            if exchange is not None:
                self._fail(exchange, self.ended_reason or self.child.describe_exit())
        else:
            self.touch()
        return None if self.legacy else exchange

    def forget(self, exchange: Exchange) -> None:
        """The POST went away (its client disconnected): answers to it are dropped."""
        for ident in list(exchange.pending):
            if self._exchanges.get(ident) is exchange:
                del self._exchanges[ident]
        self._close(exchange)

    def _close(self, exchange: Exchange) -> None:
        exchange.settle()
        if exchange in self._open:
            self._open.remove(exchange)

    def _expire(self, exchange: Exchange, timeout: float) -> None:
        """``request_timeout`` ran out: each request still waiting gets an error, and the
        server is asked to cancel it."""
        exchange.timer = None
        of = f" of route {self.route}" if self.route else ""
        for ident in list(exchange.pending):
            if self._exchanges.get(ident) is exchange:
                del self._exchanges[ident]
            message = (
                f"the MCP server{of} did not answer request {ident!r} within {timeout:g} s "
                "(request_timeout); the request is cancelled"
            )
            exchange.put(error_body(ident, REQUEST_TIMEOUT, message, self._data()), ident, True)
            self.timeouts += 1
            if self.child is not None:
                with contextlib.suppress(UpstreamGone):
                    reason = f"no answer within {timeout:g} s (the proxy's request_timeout)"
                    self.child.send(cancelled(ident, reason))
        self._close(exchange)

    # -- server → client -----------------------------------------------------------------
    def deliver(self, message: Message) -> None:
        self.messages_out += 1
        self.touch()
        if message.kind is Kind.RESPONSE:
            exchange = self._exchanges.pop(message.id, None)
            if exchange is not None:
                exchange.put(message.raw, message.id, final=True)
                if not exchange.pending:
                    self._close(exchange)
            return  # else nobody waits for it (any more): dropped, on either transport
        if self.legacy:
            self._to_stream(message.raw)
        elif self._open:
            self._open[0].put(message.raw)
        elif self.stream is not None:
            self.stream.put_nowait(message.raw)
        else:
            self._backlog.append(message.raw)

    def _to_stream(self, raw: bytes) -> None:
        if self.stream is not None:
            self.stream.put_nowait(raw)
        else:
            self._backlog.append(raw)

    def open_stream(self) -> asyncio.Queue[bytes | None]:
        queue: asyncio.Queue[bytes | None] = asyncio.Queue()
        while self._backlog:
            queue.put_nowait(self._backlog.popleft())
        self.stream = queue
        return queue

    def close_stream(self, queue: asyncio.Queue[bytes | None]) -> None:
        if self.stream is queue:
            self.stream = None

    # -- the end -------------------------------------------------------------------------
    def end(self, state: SessionState, reason: str) -> None:
        """Every waiting request gets a JSON-RPC error saying why; the GET stream ends."""
        if self.state is not SessionState.ACTIVE:
            return
        self.state = state
        self.ended_reason = reason
        self.ended_at = time.time()
        for exchange in list(self._open):
            self._fail(exchange, reason)
        if self.stream is not None:
            self.stream.put_nowait(None)

    def _fail(self, exchange: Exchange, reason: str) -> None:
        for ident in list(exchange.pending):
            self._exchanges.pop(ident, None)
            exchange.put(error_body(ident, SERVER_ERROR, reason, self._data()), ident, final=True)
        self._close(exchange)

    def _data(self) -> dict[str, str]:
        """The ``data`` of the proxy's errors: which session, which server process."""
        data = {"session": self.id}
        if self.child is not None:
            data["pid"] = str(self.child.pid)
        return data

    def touch(self) -> None:
        self.last_activity = time.monotonic()

    @property
    def busy(self) -> bool:
        return bool(self._open)

    def describe(self) -> dict[str, Any]:
        child = self.child
        return {
            "id": self.id,
            "client": self.client,
            "state": self.state.value,
            "upstream": None if child is None else child.label,
            "upstream_pid": None if child is None else child.pid,
            "upstream_alive": child is not None and child.alive,
            "age_seconds": round(time.time() - self.created, 3),
            "idle_seconds": round(time.monotonic() - self.last_activity, 3),
            "messages_in": self.messages_in,
            "messages_out": self.messages_out,
            "in_flight": sum(len(e.pending) for e in self._open),
            "stream_open": self.stream is not None,
            "ended_reason": self.ended_reason,
        }
