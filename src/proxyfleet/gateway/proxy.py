"""Forward one HTTP request to a leased backend, failing over before the first byte.

A failure (connect error, timeout, 5xx) before anything was sent to the client is retried on
another backend, up to ``retries`` times; a 429 moves on without counting against the backend's
health. Once bytes have gone to the client the request is never retried: a broken stream ends
with an SSE ``error`` event the client can parse.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

from proxyfleet.debuglog.columns import Selection
from proxyfleet.debuglog.recorder import DebugRecorder
from proxyfleet.errors import GatewayError, NoHealthyBackend, UpstreamError, UpstreamTimeout
from proxyfleet.gateway.asgi import Scope, Send, sse_error
from proxyfleet.gateway.metrics import GatewayMetrics
from proxyfleet.gateway.rules import response_headers, upstream_headers
from proxyfleet.orchestrator.events import StreamEvents
from proxyfleet.pool import BackendSpec, Lease, Outcome, Pool
from proxyfleet.pool.backend import public_url
from proxyfleet.upstream import Origin, UpstreamClient, UpstreamResponse

__all__ = ["Forwarder", "Sent", "StreamBroken", "Transform"]

_RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})


class StreamBroken(Exception):
    """A non-SSE body broke after it started: the response is left incomplete on purpose."""


@dataclass(slots=True)
class Sent:
    """What went to the client, for logs and metrics."""

    started: float = 0.0  # perf_counter when the request came in
    status: int = 0
    backend: str | None = None
    bytes: int = 0
    complete: bool = False  # the last body message is being sent
    sse: bool = False  # the body is an event stream
    first_byte: float = 0.0  # perf_counter when the response head went out
    broken: str | None = None  # why a started stream ended early: upstream_error / timeout
    gone: bool = False  # the client disconnected
    # Debug mode only (see debuglog.columns): the lease that served it, when that lease waited
    # or was not the first attempt
    selection: Selection | None = None

    def lease(self, candidates: int) -> Selection | None:
        """The selection of the lease that served it, for its debug row. A first attempt
        granted at once kept nothing (that is most requests, so it costs nothing): no wait, no
        queue, ``candidates`` backends, at the request's start (its body read just before)."""
        if self.selection is not None:
            return self.selection
        return None if self.backend is None else (self.started, 0.0, 0, candidates, 0)

    def end_reason(self) -> str:
        """Why the response ended: completed, client_disconnected, upstream_error, timeout, or
        cancelled (the gateway gave up on it, e.g. at the end of a shutdown grace)."""
        if self.gone:
            return "client_disconnected"
        if self.broken:
            return self.broken
        if not self.complete:
            return "cancelled"
        return "upstream_error" if self.status >= 500 else "completed"


class Transform(Protocol):
    """Turns a successful upstream answer into another shape (see :mod:`.translate`)."""

    upstream_headers: Mapping[str, str]

    async def deliver(
        self,
        send: Send,
        response: UpstreamResponse,
        rid: str,
        lease: Lease,
        sent: Sent,
        head: Callable[[], None],
    ) -> None: ...


class _Retry(Exception):
    """Control flow inside this module: try the next backend."""

    def __init__(self, error: GatewayError) -> None:
        self.error = error


class Forwarder:
    def __init__(
        self,
        client: UpstreamClient,
        pool: Pool,
        metrics: GatewayMetrics,
        *,
        retries: int,
        strip_client_auth: bool,
        debug: DebugRecorder | None = None,
        events: StreamEvents | None = None,
    ) -> None:
        self._client = client
        self._origins: dict[str, Origin] = {}
        self._events = events
        self._pool = pool
        self._metrics = metrics
        self._retries = retries
        self._strip_client_auth = strip_client_auth
        self._debug = debug

    def _origin(self, backend: BackendSpec) -> Origin:
        """Parsed once per backend URL (backends may join an elastic pool at any time)."""
        origin = self._origins.get(backend.base_url)
        if origin is None:
            origin = self._origins[backend.base_url] = Origin.parse(backend.base_url)
        return origin

    async def _lease(
        self, rid: str, tried: list[str], last: GatewayError | None, sent: Sent | None = None
    ) -> Lease:
        """A lease on a backend not tried yet; when none is left, the last failure is the
        answer rather than "no healthy backend". In debug mode the selection is recorded: on
        ``sent``, to go out with the request's row, else as a row of its own."""
        try:
            lease = await self._pool.acquire(rid, exclude=tried)
        except NoHealthyBackend:
            if last is not None:
                raise last from None
            raise
        wait = lease.wait_seconds
        self._metrics.lease_wait.observe(wait)
        debug = self._debug
        if debug is not None and (wait or tried or sent is None):  # see Sent.lease
            self._selection(debug, rid, lease, tried, sent)
        return lease

    def _selection(
        self, debug: DebugRecorder, rid: str, lease: Lease, tried: list[str], sent: Sent | None
    ) -> None:
        """A lease that waited, failed over or serves no request row (a WebSocket's), for debug
        mode: the whole selection now, and a stress check on the wait and the queue."""
        pool = self._pool
        wait, waiting, candidates = lease.wait_seconds, pool.waiting, len(pool.backends)
        selection = (time.perf_counter(), wait, waiting, candidates, len(tried))
        if sent is None:  # not tied to a request's row: a row of its own
            debug.selections.append((rid, lease.backend.id, selection))
        else:  # goes out with the request's row; an earlier attempt's gets its own now
            earlier = sent.lease(candidates)
            if earlier is not None:
                debug.selections.append((rid, sent.backend, earlier))
            sent.selection = selection
        if wait > debug.slow_selection or waiting >= debug.saturated:
            debug.pressure(rid, wait, waiting)

    async def forward(
        self,
        scope: Scope,
        send: Send,
        rid: str,
        tail: str,
        body: bytes,
        sent: Sent,
        transform: Transform | None = None,
    ) -> None:
        """Serve the request through the pool; raises GatewayError if nothing was sent.

        With a ``transform``, a 200 answer is delivered by it (translated) instead of as is."""
        tried: list[str] = []
        last: GatewayError | None = None
        for attempt in range(self._retries + 1):
            lease = await self._lease(rid, tried, last, sent)
            try:
                async with lease:
                    sent.backend = lease.backend.id
                    await self._attempt(
                        scope,
                        send,
                        rid,
                        tail,
                        body,
                        lease,
                        sent,
                        transform,
                        last_try=attempt == self._retries,
                    )
                    return
            except _Retry as retry:
                tried.append(lease.backend.id)
                last = retry.error
                self._metrics.failovers.inc()
        assert last is not None
        raise last

    async def call(
        self, scope: Scope, rid: str, tail: str, body: bytes, extra: Mapping[str, str]
    ) -> tuple[Lease, UpstreamResponse]:
        """A leased backend and its answer's head, failing over before any answer came.

        For callers that consume the answer themselves (the translated WebSocket): they own
        both and must release the lease and close or release the response."""
        tried: list[str] = []
        last: GatewayError | None = None
        for attempt in range(self._retries + 1):
            lease = await self._lease(rid, tried, last)
            backend = lease.backend
            headers = self._headers(scope, backend.headers, rid, extra)
            try:
                response = await self._client.request(
                    self._origin(backend), "POST", tail, headers, body
                )
            except (TimeoutError, OSError) as exc:
                await lease.release(Outcome.FAILURE)
                tried.append(backend.id)
                last = UpstreamError(f"backend {backend.id} failed: {type(exc).__name__}")
                continue
            if response.status in _RETRY_STATUSES and attempt < self._retries:
                response.close()
                failed = response.status >= 500
                await lease.release(Outcome.FAILURE if failed else Outcome.NEUTRAL)
                tried.append(backend.id)
                last = UpstreamError(f"backend {backend.id} answered {response.status}")
                continue
            return lease, response
        assert last is not None
        raise last

    async def _attempt(
        self,
        scope: Scope,
        send: Send,
        rid: str,
        tail: str,
        body: bytes,
        lease: Lease,
        sent: Sent,
        transform: Transform | None,
        *,
        last_try: bool,
    ) -> None:
        backend = lease.backend
        extra = transform.upstream_headers if transform is not None else None
        headers = self._headers(scope, backend.headers, rid, extra)
        try:
            response = await self._client.request(
                self._origin(backend), scope["method"], tail, headers, body
            )
        except TimeoutError as exc:
            lease.fail()
            self._note(rid, backend.id, exc)
            raise _Retry(UpstreamTimeout(f"backend {backend.id} timed out")) from exc
        except OSError as exc:
            lease.fail()
            self._note(rid, backend.id, exc)
            raise _Retry(
                UpstreamError(
                    f"backend {backend.id} at {public_url(backend.base_url)} failed: "
                    f"{type(exc).__name__}"
                )
            ) from exc
        try:
            await self._deliver(send, rid, response, lease, sent, transform, last_try=last_try)
        except BaseException:
            response.close()
            raise
        response.release()

    def _headers(
        self,
        scope: Scope,
        credentials: tuple[tuple[str, str], ...],
        rid: str,
        extra: Mapping[str, str] | None,
    ) -> dict[str, str]:
        headers = upstream_headers(
            scope["headers"], credentials, rid, strip_client_auth=self._strip_client_auth
        )
        if extra:
            headers.update(extra)
        return headers

    def _note(self, rid: str, backend: str, exc: BaseException) -> None:
        if self._debug is not None:
            self._debug.error(rid, "upstream", "request", exc, backend=backend)

    def _head(self, sent: Sent, rid: str, backend: str) -> None:
        """The response head is about to go out: time to first byte, and a stream starts."""
        sent.first_byte = time.perf_counter()
        if sent.sse and self._debug is not None:
            self._debug.stream(rid, "started", backend)

    async def _deliver(
        self,
        send: Send,
        rid: str,
        response: UpstreamResponse,
        lease: Lease,
        sent: Sent,
        transform: Transform | None,
        *,
        last_try: bool,
    ) -> None:
        status = response.status
        if status >= 500:
            lease.fail()
        if status in _RETRY_STATUSES and not last_try:
            raise _Retry(UpstreamError(f"backend {lease.backend.id} answered {status}"))
        if self._events is not None:
            await self._events.started(rid, lease.backend)
        if transform is not None and status == 200:
            await transform.deliver(
                send, response, rid, lease, sent, lambda: self._head(sent, rid, lease.backend.id)
            )
            return
        headers = response_headers(response.headers, rid.encode())
        sse = response.content_type == b"text/event-stream"
        if response.content_length is not None and not sse:
            try:
                payload = await response.read()
            except (TimeoutError, OSError) as exc:
                lease.fail()
                if last_try:
                    raise UpstreamError(f"backend {lease.backend.id} broke off") from exc
                raise _Retry(UpstreamError(f"backend {lease.backend.id} broke off")) from exc
            headers.append((b"content-length", str(len(payload)).encode()))
            sent.status = status
            self._head(sent, rid, lease.backend.id)
            await send({"type": "http.response.start", "status": status, "headers": headers})
            sent.bytes = len(payload)
            sent.complete = True
            await send({"type": "http.response.body", "body": payload})
            return
        sent.status = status
        sent.sse = sse
        self._head(sent, rid, lease.backend.id)
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await self._pump(send, response, lease, sent, rid)

    async def _pump(
        self, send: Send, response: UpstreamResponse, lease: Lease, sent: Sent, rid: str
    ) -> None:
        """Chunk by chunk, as it arrives. A broken upstream ends an SSE stream with an ``error``
        event; any other body is left incomplete, so the client sees the truncation."""
        try:
            while (chunk := await response.next_chunk()) is not None:
                sent.bytes += len(chunk)
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        except (TimeoutError, OSError) as exc:
            lease.fail()
            sent.broken = "timeout" if isinstance(exc, TimeoutError) else "upstream_error"
            self._note(rid, lease.backend.id, exc)
            error: GatewayError = (
                UpstreamTimeout(f"backend {lease.backend.id} went silent mid-stream")
                if isinstance(exc, TimeoutError)
                else UpstreamError(f"backend {lease.backend.id} broke off mid-stream")
            )
            error.code = "upstream_stream_broken"
            if not sent.sse:
                raise StreamBroken(error.message) from exc
            sent.complete = True
            await send({"type": "http.response.body", "body": sse_error(error), "more_body": False})
            return
        sent.complete = True
        await send({"type": "http.response.body", "body": b"", "more_body": False})
