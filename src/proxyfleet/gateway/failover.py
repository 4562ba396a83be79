"""The one failover routine: lease a backend, try, and on a retryable failure try the next.

Every path that reaches a backend (a proxied HTTP request, a translated WebSocket turn, a
WebSocket passthrough) runs its attempt through :meth:`Failover.run`. An attempt raises
:class:`Retry` for a failure before anything reached the client; the lease is released (as
marked: a failure counts towards quarantine, a 429 is neutral) and another backend, one not
tried yet, is leased, up to ``retries`` times. When no untried backend is left, the last failure
is the answer rather than "no healthy backend".
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

from proxyfleet.debuglog.requests import RequestLog, Served
from proxyfleet.errors import GatewayError, NoHealthyBackend
from proxyfleet.gateway.metrics import GatewayMetrics
from proxyfleet.pool import Lease, Pool
from proxyfleet.transports import Transport, Transports

__all__ = ["Attempt", "Failover", "Retry"]

T = TypeVar("T")

#: One try on a leased backend through its transport; ``last`` says no retry will follow.
Attempt = Callable[[Lease, Transport, bool], Awaitable[T]]

#: Statuses an upstream may answer that are worth another backend (before any byte went out).
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})


class Retry(Exception):
    """Raised by an attempt: try the next backend, or answer ``error`` if none is left."""

    def __init__(self, error: GatewayError) -> None:
        super().__init__(error.message)
        self.error = error


class Failover:
    def __init__(
        self,
        pool: Pool,
        transports: Transports,
        metrics: GatewayMetrics,
        *,
        retries: int,
        debug: RequestLog | None = None,
    ) -> None:
        self._pool = pool
        self._transports = transports
        self._by_kind = transports.by_kind
        self._metrics = metrics
        self._retries = retries
        self._debug = debug

    async def run(self, rid: str, attempt: Attempt[T], served: Served | None = None) -> T:
        """``attempt`` on a leased backend until one does not ask for a retry.

        ``served`` is the request's recording (it learns the backend; debug mode puts the
        lease's selection on it); None for a lease that serves no request row."""
        tried: list[str] = []
        last: GatewayError | None = None
        retries = self._retries
        for n in range(retries + 1):
            lease = await self._lease(rid, tried, last, served)
            backend = lease.backend
            if served is not None:
                served.backend = backend.id
            try:
                async with lease:
                    transport = self._by_kind.get(backend.kind) or self._transports.of(backend)
                    return await attempt(lease, transport, n == retries)
            except Retry as retry:
                tried.append(backend.id)
                last = retry.error
                self._metrics.failovers += 1
        assert last is not None  # the loop ran at least once and every pass set it
        raise last

    async def _lease(
        self, rid: str, tried: list[str], last: GatewayError | None, served: Served | None
    ) -> Lease:
        try:
            lease = await self._pool.acquire(rid, exclude=tried)
        except NoHealthyBackend:
            if last is not None:
                raise last from None
            raise
        wait = lease.wait_seconds
        self._metrics.lease_wait.observe(wait)
        debug = self._debug
        if debug is not None and (wait or tried or served is None):  # see Recording.lease
            pool = self._pool
            debug.selected(rid, lease.backend.id, wait, pool.waiting, pool.size, len(tried), served)
        return lease
