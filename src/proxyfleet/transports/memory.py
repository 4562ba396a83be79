"""The ``memory`` transport: backends inside the process, answering from a script.

For tests of timing-dependent behaviour on a virtual clock, without sockets: each request is
answered by an :class:`Answer` (status, headers, body chunks, delays between them, or a fault)
that a script picks per backend and request. Like a real upstream, the answer is produced by a
task of its own: a request stays in flight, as the "upstream" sees it, until its answer is
produced to the end, or until it notices that nobody reads it any more (at its next chunk,
after the gateway closed the exchange). :attr:`MemoryTransport.peak` is what an upstream's own
counters would say about concurrency per backend.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from proxyfleet.errors import UpstreamClosed, UpstreamError, UpstreamRefused, UpstreamTimeout
from proxyfleet.pool.backend import BackendSpec
from proxyfleet.transports.base import Request

__all__ = ["Answer", "Fault", "MemoryChannel", "MemoryExchange", "MemoryTransport", "Script"]

Fault = Literal["refuse", "hang", "drop"]
_JSON = ((b"content-type", b"application/json"),)


@dataclass(frozen=True, slots=True)
class Answer:
    """How a memory backend answers one request.

    ``delay`` passes before the head; ``gap`` between chunks. The answer has a length unless
    its headers make it an event stream or a chunked body. Faults: ``refuse`` (cannot
    connect), ``hang`` (no answer ever: the read timeout ends it), ``drop`` (the connection
    breaks after ``drop_after`` chunks)."""

    status: int = 200
    headers: tuple[tuple[bytes, bytes], ...] = _JSON
    chunks: tuple[bytes, ...] = (b"{}",)
    delay: float = 0.0
    gap: float = 0.0
    fault: Fault | None = None
    drop_after: int = 0

    @classmethod
    def sse(cls, events: Sequence[bytes], gap: float = 0.0, **kwargs: object) -> Answer:
        """An event stream, one chunk per event."""
        return cls(
            headers=((b"content-type", b"text/event-stream"),),
            chunks=tuple(events),
            gap=gap,
            **kwargs,  # type: ignore[arg-type]
        )

    @property
    def streamed(self) -> bool:
        """Sent without a length: an event stream, or a chunked body."""
        return any(
            (name.lower(), value.lower())
            in ((b"content-type", b"text/event-stream"), (b"transfer-encoding", b"chunked"))
            for name, value in self.headers
        )

    @property
    def content_length(self) -> int | None:
        return None if self.streamed else sum(len(chunk) for chunk in self.chunks)


#: Picks the answer for a request to a backend.
Script = Callable[[BackendSpec, Request], Answer]


class MemoryExchange:
    """A memory backend's answer, produced by its own task as a real upstream would."""

    def __init__(
        self, transport: MemoryTransport, backend: BackendSpec, answer: Answer, timeout: float
    ) -> None:
        self.status = answer.status
        self.headers: list[tuple[bytes, bytes]] = list(answer.headers)
        self.content_length = answer.content_length
        if self.content_length is not None:
            self.headers.append((b"content-length", str(self.content_length).encode()))
        self.content_type = next(
            (v.split(b";")[0].strip().lower() for k, v in answer.headers if k == b"content-type"),
            b"",
        )
        self._transport = transport
        self._backend = backend
        self._answer = answer
        self._timeout = timeout
        self._chunks: collections.deque[bytes] = collections.deque()
        self._ready = asyncio.Event()
        self._finished = False
        self._error: UpstreamError | None = None
        self._abandoned = False
        self._task = asyncio.ensure_future(self._produce())

    async def _produce(self) -> None:
        answer = self._answer
        try:
            for n, chunk in enumerate(answer.chunks):
                if n and answer.gap:
                    await asyncio.sleep(answer.gap)
                if self._abandoned:
                    return  # it noticed, writing, that nobody reads any more
                if answer.fault == "drop" and n >= answer.drop_after:
                    self._error = UpstreamClosed("upstream closed the connection mid-answer")
                    return
                self._chunks.append(chunk)
                self._ready.set()
            self._finished = True
        finally:
            self._ready.set()
            self._transport._ended(self._backend)

    async def next_chunk(self) -> bytes | None:
        while not self._chunks:
            if self._finished:
                return None
            if self._error is not None:
                raise self._error
            if self._abandoned:
                raise UpstreamClosed("the exchange was closed")
            self._ready.clear()
            try:
                await asyncio.wait_for(self._ready.wait(), self._timeout)
            except TimeoutError as exc:
                raise UpstreamTimeout(f"upstream silent for {self._timeout:g}s") from exc
        data = b"".join(self._chunks)
        self._chunks.clear()
        return data

    async def read(self) -> bytes:
        parts = []
        while (chunk := await self.next_chunk()) is not None:
            parts.append(chunk)
        return b"".join(parts)

    def release(self) -> None:
        if not self._finished:
            self.close()

    def close(self) -> None:
        self._abandoned = True
        self._ready.set()


class MemoryChannel:
    """A memory backend's WebSocket: it echoes what it is sent."""

    def __init__(self, subprotocol: str | None) -> None:
        self.subprotocol = subprotocol
        self._inbox: asyncio.Queue[str | bytes | None] = asyncio.Queue()
        self._code: int | None = None

    async def send(self, message: str | bytes) -> None:
        if self._code is not None:
            raise UpstreamClosed("upstream WebSocket is closed")
        await self._inbox.put(message)

    async def receive(self) -> str | bytes | None:
        if self._code is not None and self._inbox.empty():
            return None
        return await self._inbox.get()

    @property
    def close_code(self) -> int | None:
        return self._code

    async def close(self, code: int = 1000) -> None:
        if self._code is None:
            self._code = code
            await self._inbox.put(None)


@dataclass(slots=True)
class _Counter:
    inflight: int = 0
    peak: int = 0
    requests: int = 0


class MemoryTransport:
    """Backends of kind ``memory``, answered by ``script`` (one answer for every request, or a
    function of the backend and the request)."""

    def __init__(self, script: Script | Answer = Answer(), *, read_timeout: float = 600.0) -> None:
        self._script: Script = script if callable(script) else (lambda _b, _r: script)
        self._read_timeout = read_timeout
        self._counters: dict[str, _Counter] = collections.defaultdict(_Counter)
        self.seen: list[tuple[str, Request]] = []  # (backend id, request), in arrival order
        self.forgotten: list[str] = []
        self._exchanges: set[MemoryExchange] = set()
        self.closed = False

    async def __aenter__(self) -> MemoryTransport:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    @property
    def inflight(self) -> dict[str, int]:
        return {k: c.inflight for k, c in self._counters.items()}

    @property
    def peak(self) -> dict[str, int]:
        """The most requests each backend had in flight at once, as it saw them."""
        return {k: c.peak for k, c in self._counters.items()}

    @property
    def requests(self) -> dict[str, int]:
        return {k: c.requests for k, c in self._counters.items()}

    def _started(self, backend: BackendSpec) -> None:
        counter = self._counters[backend.id]
        counter.inflight += 1
        counter.requests += 1
        counter.peak = max(counter.peak, counter.inflight)

    def _ended(self, backend: BackendSpec) -> None:
        self._counters[backend.id].inflight -= 1

    async def handle(self, backend: BackendSpec, request: Request) -> MemoryExchange:
        answer = self._script(backend, request)
        self.seen.append((backend.id, request))
        if answer.fault == "refuse":
            raise UpstreamError(f"backend {backend.id} at {backend.base_url} failed: refused")
        self._started(backend)
        try:
            if answer.fault == "hang":
                await asyncio.sleep(self._read_timeout)
                raise UpstreamTimeout(f"backend {backend.id} timed out")
            if answer.delay:
                await asyncio.sleep(answer.delay)
        except BaseException:
            self._ended(backend)  # the upstream gives up on a request nobody waits for
            raise
        exchange = MemoryExchange(self, backend, answer, self._read_timeout)
        self._exchanges.add(exchange)
        exchange._task.add_done_callback(lambda _: self._exchanges.discard(exchange))
        return exchange

    async def connect(
        self, backend: BackendSpec, request: Request, subprotocols: Sequence[str] = ()
    ) -> MemoryChannel:
        answer = self._script(backend, request)
        self.seen.append((backend.id, request))
        if answer.fault == "refuse":
            raise UpstreamError(f"backend {backend.id} is unreachable")
        if answer.status != 101 and answer.status >= 400:
            raise UpstreamRefused(
                f"backend {backend.id} refused the WebSocket ({answer.status})", answer.status
            )
        return MemoryChannel(subprotocols[0] if subprotocols else None)

    def forget(self, backend: BackendSpec) -> None:
        self.forgotten.append(backend.id)

    async def aclose(self) -> None:
        self.closed = True
        for exchange in list(self._exchanges):
            exchange.close()
            exchange._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await exchange._task
