"""A client session of an MCP route and the exchanges in flight on it.

A session owns one upstream (a stdio child here) and routes what it says: a response goes to
the exchange (the POST) waiting for its id; anything else the server sends (notifications, its
own requests) goes to the oldest open exchange, else to the client's GET stream, else waits in
a bounded backlog for one. Sessions never share an upstream, so nothing crosses between them.
"""

from __future__ import annotations

import asyncio
import collections
import enum
import time
from collections.abc import Callable, Iterable
from typing import Any, Protocol

from proxyfleet.errors import UpstreamGone
from proxyfleet.mcpproxy.jsonrpc import SERVER_ERROR, Kind, Message, error_body

__all__ = ["Exchange", "Session", "SessionState", "Upstream"]


class Upstream(Protocol):
    """A session's upstream: a stdio child, or a session on a streamable-HTTP server."""

    pid: int | None
    stopping: bool
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
    """One POST waiting for the responses to its requests; ``queue`` yields messages to send,
    then None when every response has come."""

    __slots__ = ("pending", "queue")

    def __init__(self, ids: Iterable[Any]) -> None:
        self.pending = set(ids)
        self.queue: asyncio.Queue[bytes | None] = asyncio.Queue()

    def put(self, raw: bytes, answered: Any = None, final: bool = False) -> None:
        self.queue.put_nowait(raw)
        if final:
            self.pending.discard(answered)
            if not self.pending:
                self.queue.put_nowait(None)


class Session:
    def __init__(
        self, session_id: str, client: str, child: Upstream | None, *, legacy: bool = False
    ) -> None:
        self.id = session_id
        self.legacy = legacy  # the SSE transport: everything the server says goes to ``stream``
        self.client = client
        self.child = child
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
        """Send a POST's messages upstream; an exchange when it holds requests."""
        requests = [m.id for m in messages if m.kind is Kind.REQUEST]
        exchange = Exchange(requests) if requests and not self.legacy else None
        if exchange is not None:
            for ident in requests:
                self._exchanges[ident] = exchange
            self._open.append(exchange)
        assert self.child is not None
        try:
            for message in messages:
                self.child.send(message.raw)
                self.messages_in += 1
        except UpstreamGone:
            if exchange is not None:
                self._fail(exchange, self.ended_reason or self.child.describe_exit())
            return exchange
        self.touch()
        return exchange

    def forget(self, exchange: Exchange) -> None:
        """The POST went away (its client disconnected): answers to it are dropped."""
        for ident in list(exchange.pending):
            if self._exchanges.get(ident) is exchange:
                del self._exchanges[ident]
        if exchange in self._open:
            self._open.remove(exchange)

    # -- server → client -----------------------------------------------------------------
    def deliver(self, message: Message) -> None:
        self.messages_out += 1
        self.touch()
        if self.legacy and self.stream is not None:
            self.stream.put_nowait(message.raw)
            return
        if message.kind is Kind.RESPONSE:
            exchange = self._exchanges.pop(message.id, None)
            if exchange is not None:
                exchange.put(message.raw, message.id, final=True)
                if not exchange.pending and exchange in self._open:
                    self._open.remove(exchange)
            return
        if self._open:
            self._open[0].put(message.raw)
        elif self.stream is not None:
            self.stream.put_nowait(message.raw)
        else:
            self._backlog.append(message.raw)

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
        data = {"session": self.id}
        if self.child is not None:
            data["pid"] = str(self.child.pid)
        for ident in list(exchange.pending):
            self._exchanges.pop(ident, None)
            exchange.put(error_body(ident, SERVER_ERROR, reason, data), ident, final=True)
        if exchange in self._open:
            self._open.remove(exchange)

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
