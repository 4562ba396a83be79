"""What the gateway needs from whatever reaches a backend: the transport interface.

A transport carries one upstream exchange at a time for a backend of its kind:

::

    exchange = await transport.handle(backend, Request("POST", "/chat/completions", headers, body))
    exchange.status, exchange.headers          # the answer's head, once it arrived
    while (chunk := await exchange.next_chunk()) is not None:
        ...                                    # the body, piece by piece, as it comes
    exchange.release()                         # done: what it held may be reused (or close())

The backend's credentials are the transport's business: the gateway hands over the client's
request (hop-by-hop headers already removed) and never touches a secret. Every failure is one
of our :class:`~proxyfleet.errors.UpstreamError` family, translated at the transport's
boundary: :class:`~proxyfleet.errors.UpstreamTimeout` (no answer, or silence past the read
timeout), :class:`~proxyfleet.errors.UpstreamClosed` (broke off mid-answer), a plain
:class:`~proxyfleet.errors.UpstreamError` (could not reach it), so the gateway catches only ours.

The shape fits more than HTTP: a browser-page backend turns the request into actions in a
logged-in page and streams the answer as it appears (status, event-stream headers, the events
as chunks); a media engine's stream is an exchange whose body is the stream. A long-lived
two-way session (the Responses API over WebSocket) is a :class:`Channel`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

from proxyfleet.errors import UpstreamError
from proxyfleet.pool.backend import BackendSpec

__all__ = ["Channel", "Exchange", "Request", "Transport", "Transports"]


class Request:
    """One request for a backend: ``target`` is the path and query under its base URL,
    ``headers`` the client's (lowercase names, hop-by-hop ones removed). Built once per client
    request (a plain slotted class: it is on the hot path)."""

    __slots__ = ("body", "headers", "method", "target")

    def __init__(
        self,
        method: str,
        target: str,
        headers: Mapping[str, str] | None = None,
        body: bytes = b"",
    ) -> None:
        self.method = method
        self.target = target
        self.headers: Mapping[str, str] = {} if headers is None else headers
        self.body = body

    def __repr__(self) -> str:
        return f"<Request {self.method} {self.target} ({len(self.body)} bytes)>"


class Exchange(Protocol):
    """An upstream's answer: its head at once, the body chunk by chunk.

    Exactly one of :meth:`release` (finished with it; what it held may be reused when the
    body was read to its end) or :meth:`close` (abort) ends it; both are idempotent."""

    @property
    def status(self) -> int: ...

    @property
    def headers(self) -> Sequence[tuple[bytes, bytes]]:
        """As received; names in their original case."""
        ...

    @property
    def content_type(self) -> bytes:
        """The media type, lowercased, without parameters."""
        ...

    @property
    def content_length(self) -> int | None: ...

    async def next_chunk(self) -> bytes | None:
        """The body received so far (at least one byte), or None at its end."""
        ...

    async def read(self) -> bytes:
        """The rest of the body, whole."""
        ...

    def release(self) -> None: ...
    def close(self) -> None: ...


class Channel(Protocol):
    """A two-way message channel to a backend (an upstream WebSocket)."""

    @property
    def subprotocol(self) -> str | None: ...

    async def send(self, message: str | bytes) -> None: ...

    async def receive(self) -> str | bytes | None:
        """The next message, or None once the channel closed (see :attr:`close_code`)."""
        ...

    @property
    def close_code(self) -> int | None: ...

    async def close(self, code: int = 1000) -> None: ...


class Transport(Protocol):
    """Reaches the backends of one kind; used as ``async with`` (its ``aclose`` ends it)."""

    async def __aenter__(self) -> Transport: ...

    async def handle(self, backend: BackendSpec, request: Request) -> Exchange:
        """Send ``request`` to ``backend``; the exchange once its answer's head arrived."""
        ...

    async def connect(
        self, backend: BackendSpec, request: Request, subprotocols: Sequence[str] = ()
    ) -> Channel:
        """Open a channel (a WebSocket at ``request.target``) to ``backend``."""
        ...

    def forget(self, backend: BackendSpec) -> None:
        """``backend`` left the pool: drop what is kept for it (idle connections, caches)."""
        ...

    async def aclose(self) -> None: ...


class Transports:
    """The transport of each backend kind (``BackendSpec.kind`` → transport), opened and
    closed together: ``async with Transports({"http": HttpTransport()}) as transports:``."""

    def __init__(self, by_kind: Mapping[str, Transport]) -> None:
        self.by_kind: dict[str, Transport] = dict(by_kind)

    def of(self, backend: BackendSpec) -> Transport:
        transport = self.by_kind.get(backend.kind)
        if transport is None:
            raise UpstreamError(f"backend {backend.id}: no transport for kind {backend.kind!r}")
        return transport

    async def __aenter__(self) -> Transports:
        for transport in self.by_kind.values():
            await transport.__aenter__()
        return self

    async def __aexit__(self, *exc: object) -> None:
        for transport in self.by_kind.values():
            await transport.aclose()
