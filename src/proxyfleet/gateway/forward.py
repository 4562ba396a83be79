"""Forward one HTTP request to a leased backend and its answer to the client.

A failure (cannot connect, timeout, 5xx) before anything was sent to the client is retried on
another backend through :class:`~proxyfleet.gateway.failover.Failover`; a 429 moves on without
counting against the backend's health. Once bytes have gone to the client the request is
never retried: a broken event stream ends with an SSE ``error`` event the client can parse,
any other body is left incomplete so the client sees the truncation.

A client that leaves while its backend works does not free the backend: the upstream would
go on with the abandoned request until it next writes, beside the next one. The lease is held
until the upstream is known to have stopped (:class:`Abandon`): its answer read to the end and
discarded (``drain``), or its connection closed and ``grace`` seconds passed (``close``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass
from typing import Literal, Protocol

from proxyfleet._asgi import Send, sse_error
from proxyfleet.debuglog.recorder import DebugRecorder
from proxyfleet.errors import ClientGone, GatewayError, UpstreamError, UpstreamTimeout
from proxyfleet.gateway.failover import RETRY_STATUSES, Failover, Retry
from proxyfleet.gateway.recording import Recording
from proxyfleet.gateway.rules import response_headers
from proxyfleet.orchestrator.events import StreamEvents
from proxyfleet.pool import Lease
from proxyfleet.transports import Exchange, Request, Transport

__all__ = ["Abandon", "Forwarder", "StreamBroken", "Transform", "cut_if_timeout"]


@dataclass(frozen=True, slots=True)
class Abandon:
    """What is done with an upstream exchange whose client left (``pool.abandon``)."""

    mode: Literal["drain", "close"] = "drain"
    grace: float = 30.0  # drain: the longest the rest of an answer is read

    @property
    def waits_for_the_head(self) -> bool:
        """A request already sent is left to answer (drain), not cut before its head."""
        return self.mode == "drain"

    async def settle(self, exchange: Exchange | None, lease: Lease) -> None:
        """End the exchange the safest way known, then return (the caller releases the
        lease). Runs in a task whose cancellation was for the client leaving: that
        cancellation is taken back first."""
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            task.uncancel()
        if exchange is not None and self.mode == "drain":
            try:
                async with asyncio.timeout(self.grace):
                    while await exchange.next_chunk() is not None:
                        pass
                exchange.release()
                return  # the answer ended: the upstream is done with it
            except (TimeoutError, UpstreamError):
                pass
        if exchange is not None:
            exchange.close()
        lease.cut()  # cut before its end: the backend stays leased a while (settle_grace)


def cut_if_timeout(lease: Lease, exc: UpstreamError) -> None:
    """A timeout means the gateway gave up on a connection the upstream may still serve."""
    if isinstance(exc, UpstreamTimeout):
        lease.cut()


class StreamBroken(Exception):
    """A non-SSE body broke after it started: the response is left incomplete on purpose."""


class Transform(Protocol):
    """Turns a successful upstream answer into another shape (see :mod:`.translate`)."""

    upstream_headers: Mapping[str, str]

    async def deliver(
        self, send: Send, exchange: Exchange, lease: Lease, recording: Recording
    ) -> None: ...


class Forwarder:
    def __init__(
        self,
        failover: Failover,
        *,
        abandon: Abandon = Abandon(),
        debug: DebugRecorder | None = None,
        events: StreamEvents | None = None,
    ) -> None:
        self._failover = failover
        self.abandon = abandon
        self._debug = debug
        self._events = events

    def forward(
        self,
        request: Request,
        recording: Recording,
        send: Send,
        transform: Transform | None = None,
    ) -> Awaitable[None]:
        """Serve the request through the pool, answering through ``send`` (the recording's, or
        a wrapper of it); raises GatewayError if nothing was sent.

        With a ``transform``, a 200 answer is delivered by it (translated) instead of as is."""

        async def attempt(lease: Lease, transport: Transport, last: bool) -> None:
            try:
                exchange = await transport.handle(lease.backend, request)
            except UpstreamError as exc:
                cut_if_timeout(lease, exc)
                if recording.gone:
                    raise ClientGone() from exc
                lease.fail()
                self._note(recording.rid, lease.backend.id, exc)
                raise Retry(exc) from exc
            except asyncio.CancelledError:
                if not recording.gone:
                    raise
                await self.abandon.settle(None, lease)  # cut before any answer
                raise ClientGone() from None
            if recording.gone:  # the client left while the answer's head was on its way
                await self.abandon.settle(exchange, lease)
                raise ClientGone()
            recording.answering = True
            try:
                await self._deliver(send, exchange, lease, recording, transform, last)
            except asyncio.CancelledError:
                if not recording.gone:
                    exchange.close()
                    raise
                await self.abandon.settle(exchange, lease)
                raise ClientGone() from None
            except BaseException:
                exchange.close()
                raise
            exchange.release()

        return self._failover.run(recording.rid, attempt, recording)

    def _note(self, rid: str, backend: str, exc: BaseException) -> None:
        if self._debug is not None:
            self._debug.error(rid, "upstream", "request", exc, backend=backend)

    async def _deliver(
        self,
        send: Send,
        exchange: Exchange,
        lease: Lease,
        recording: Recording,
        transform: Transform | None,
        last: bool,
    ) -> None:
        status = exchange.status
        backend = lease.backend.id
        if status >= 500:
            lease.fail()
        if status in RETRY_STATUSES and not last:
            raise Retry(UpstreamError(f"backend {backend} answered {status}"))
        if self._events is not None:
            await self._events.started(recording.rid, lease.backend)
        if transform is not None and status == 200:
            await transform.deliver(send, exchange, lease, recording)
            return
        headers = response_headers(exchange.headers, recording.rid.encode())
        sse = exchange.content_type == b"text/event-stream"
        if exchange.content_length is not None and not sse:
            try:
                payload = await exchange.read()
            except UpstreamError as exc:
                lease.fail()
                cut_if_timeout(lease, exc)
                error = UpstreamError(f"backend {backend} broke off")
                if last:
                    raise error from exc
                raise Retry(error) from exc
            headers.append((b"content-length", str(len(payload)).encode()))
            await send({"type": "http.response.start", "status": status, "headers": headers})
            await send({"type": "http.response.body", "body": payload})
            return
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await self._pump(send, exchange, lease, recording)

    async def _pump(
        self, send: Send, exchange: Exchange, lease: Lease, recording: Recording
    ) -> None:
        """Chunk by chunk, as it arrives. A broken upstream ends an SSE stream with an ``error``
        event; any other body is left incomplete, so the client sees the truncation."""
        try:
            while (chunk := await exchange.next_chunk()) is not None:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        except UpstreamError as exc:
            lease.fail()
            cut_if_timeout(lease, exc)
            timeout = isinstance(exc, UpstreamTimeout)
            recording.broken = "timeout" if timeout else "upstream_error"
            self._note(recording.rid, lease.backend.id, exc)
            backend = lease.backend.id
            error: GatewayError = (
                UpstreamTimeout(f"backend {backend} went silent mid-stream")
                if timeout
                else UpstreamError(f"backend {backend} broke off mid-stream")
            )
            error.code = "upstream_stream_broken"
            if not recording.sse:
                raise StreamBroken(error.message) from exc
            await send({"type": "http.response.body", "body": sse_error(error), "more_body": False})
            return
        await send({"type": "http.response.body", "body": b"", "more_body": False})
