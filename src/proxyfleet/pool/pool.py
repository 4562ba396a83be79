"""The pool: hands out leases on backends, FIFO waiters, timeouts, health-aware.

::

    async with Pool(backends, settings) as pool:
        async with pool.lease(request_id, timeout=5.0) as lease:
            ...  # talk to lease.backend; lease.fail() on an upstream failure

The pool owns its waiters; the :class:`~proxyfleet.pool.store.PoolStore` owns backend state.
"""

from __future__ import annotations

import asyncio
import enum
import math
import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from proxyfleet.errors import (
    GatewayError,
    LeaseTimeout,
    NoHealthyBackend,
    PoolClosed,
    QueueFull,
    StateError,
)
from proxyfleet.pool.backend import BackendSpec
from proxyfleet.pool.health import HealthPolicy, Outcome
from proxyfleet.pool.lease import Lease
from proxyfleet.pool.selection import Strategy
from proxyfleet.pool.store import (
    BackendStatus,
    Grant,
    MemoryStore,
    NoCandidate,
    PoolStore,
    Unavailable,
)

__all__ = ["Grower", "Pool", "PoolSettings", "PoolState"]


class Grower(Protocol):
    """Adds backends when the pool runs out (see :mod:`proxyfleet.orchestrator`)."""

    def demand(self, request_id: str, waiting: int) -> GatewayError | bool:
        """Request ``request_id`` found no free backend; ``waiting`` are queued already.

        True: capacity is on its way, wait for it. False: no help from here (wait for a busy
        backend, or fail when none is usable). An error: fail this request with it now."""
        ...

    @property
    def growing(self) -> bool:
        """A backend is being added right now: waiters should not give up for lack of one."""
        ...


class PoolState(enum.Enum):
    NEW = "new"
    OPEN = "open"
    CLOSED = "closed"


@dataclass(frozen=True, slots=True)
class PoolSettings:
    selection: Strategy = "lru"
    queue_limit: int = 1000
    lease_timeout: float = 30.0
    unhealthy_after: int = 3
    cooldown: float = 30.0


class _Waiter:
    __slots__ = ("exclude", "future", "request_id", "since")

    def __init__(self, future: asyncio.Future[Grant], request_id: str, exclude: Collection[str]):
        self.future = future
        self.request_id = request_id
        self.exclude = exclude
        self.since = time.monotonic()


def _retry_after(seconds: float | None) -> float:
    return float(max(1, math.ceil(seconds))) if seconds is not None else 1.0


class _LeaseContext:
    __slots__ = ("_args", "_lease", "_pool")

    def __init__(self, pool: Pool, args: tuple[str, float | None, Collection[str]]) -> None:
        self._pool = pool
        self._args = args
        self._lease: Lease | None = None

    async def __aenter__(self) -> Lease:
        self._lease = await self._pool.acquire(*self._args)
        return self._lease

    async def __aexit__(self, *exc: Any) -> None:
        assert self._lease is not None
        await self._lease.__aexit__(*exc)


class Pool:
    """Backends leased one request at a time (or up to each backend's ``max_concurrency``)."""

    def __init__(
        self,
        backends: Sequence[BackendSpec],
        settings: PoolSettings | None = None,
        store: PoolStore | None = None,
        *,
        elastic: bool = False,
    ) -> None:
        if not backends and not elastic:
            raise ValueError("a pool needs at least one backend")
        self.settings = settings = settings or PoolSettings()
        self.backends = tuple(backends)
        policy = HealthPolicy(settings.unhealthy_after, settings.cooldown)
        self._store: PoolStore = store or MemoryStore(self.backends, policy)
        self._waiters: dict[_Waiter, None] = {}
        self._state = PoolState.NEW
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wakeup: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.grower: Grower | None = None

    # -- lifecycle -------------------------------------------------------------------------
    @property
    def state(self) -> PoolState:
        return self._state

    async def __aenter__(self) -> Pool:
        if self._state is not PoolState.NEW:
            raise StateError(f"pool cannot be opened in state {self._state.value}")
        self._loop = asyncio.get_running_loop()
        self._state = PoolState.OPEN
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Refuse new leases and fail every waiter; leases held keep working until released."""
        if self._state is PoolState.CLOSED:
            return
        self._state = PoolState.CLOSED
        if self._wakeup is not None:
            self._wakeup.cancel()
        for waiter in list(self._waiters):
            if not waiter.future.done():
                waiter.future.set_exception(PoolClosed("the gateway is shutting down"))
        self._waiters.clear()
        for task in list(self._tasks):
            task.cancel()

    # -- leasing -----------------------------------------------------------------------------
    def lease(
        self, request_id: str, timeout: float | None = None, exclude: Collection[str] = ()
    ) -> _LeaseContext:
        """``async with pool.lease(request_id, timeout) as lease:`` — released on every path."""
        return _LeaseContext(self, (request_id, timeout, exclude))

    async def acquire(
        self, request_id: str, timeout: float | None = None, exclude: Collection[str] = ()
    ) -> Lease:
        """A lease, waiting up to ``timeout`` (default ``lease_timeout``) behind earlier waiters."""
        if self._state is not PoolState.OPEN:
            if self._state is PoolState.NEW:
                raise StateError("pool is not open: use 'async with Pool(...)'")
            raise PoolClosed("the gateway is shutting down")
        store = self._store
        settings = self.settings
        unusable: Unavailable | None = None
        if not self._waiters:
            result = await store.acquire(settings.selection, exclude, holder=request_id)
            if isinstance(result, Grant):
                return Lease(self, result, request_id, 0.0)
            if result.reason is NoCandidate.NONE:
                if self.grower is None:
                    raise self._no_healthy(result.retry_after)
                unusable = result
        if len(self._waiters) >= settings.queue_limit:
            raise QueueFull(
                f"all backends are busy and {len(self._waiters)} requests are already waiting",
                retry_after=1.0,
            )
        if self.grower is not None:
            verdict = self.grower.demand(request_id, len(self._waiters))
            if isinstance(verdict, GatewayError):
                raise verdict
            if unusable is not None and not verdict:
                raise self._no_healthy(unusable.retry_after)
        return await self._wait(
            request_id, settings.lease_timeout if timeout is None else timeout, exclude
        )

    async def _wait(self, request_id: str, timeout: float, exclude: Collection[str]) -> Lease:
        loop = self._loop
        assert loop is not None
        future: asyncio.Future[Grant] = loop.create_future()
        waiter = _Waiter(future, request_id, exclude)
        self._waiters[waiter] = None
        timer = loop.call_later(timeout, self._expire, waiter, timeout)
        if len(self._waiters) == 1 or exclude:
            await self._serve_waiters()  # capacity may exist for this waiter already
        self._arm_wakeup()
        try:
            grant = await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled() and future.exception() is None:
                self._spawn(self._release(future.result(), Outcome.NEUTRAL))
            raise
        finally:
            timer.cancel()
            self._waiters.pop(waiter, None)
        return Lease(self, grant, request_id, time.monotonic() - waiter.since)

    def _expire(self, waiter: _Waiter, timeout: float) -> None:
        if not waiter.future.done():
            self._waiters.pop(waiter, None)
            waiter.future.set_exception(
                LeaseTimeout(
                    f"no backend became free within {timeout:g}s "
                    f"({len(self.backends)} backends, {len(self._waiters)} still waiting)",
                    retry_after=1.0,
                )
            )

    def _no_healthy(self, retry_after: float | None) -> NoHealthyBackend:
        return NoHealthyBackend(
            "no healthy backend: every backend is quarantined or draining",
            retry_after=_retry_after(retry_after),
        )

    async def _release(self, grant: Grant, outcome: Outcome) -> None:
        await self._store.release(grant, outcome)
        if self._waiters:
            await self._serve_waiters()
            self._arm_wakeup()

    def _release_later(self, grant: Grant) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._spawn, self._release(grant, Outcome.NEUTRAL))

    async def _serve_waiters(self) -> None:
        store, strategy = self._store, self.settings.selection
        for waiter in list(self._waiters):
            if waiter.future.done():
                self._waiters.pop(waiter, None)
                continue
            result = await store.acquire(strategy, waiter.exclude, holder=waiter.request_id)
            if isinstance(result, Grant):
                self._waiters.pop(waiter, None)
                if waiter.future.done():
                    await store.release(result, Outcome.NEUTRAL)
                else:
                    waiter.future.set_result(result)
            elif result.reason is NoCandidate.NONE:
                if self.grower is not None and self.grower.growing:
                    continue  # a backend is on its way
                self._waiters.pop(waiter, None)
                if not waiter.future.done():
                    waiter.future.set_exception(self._no_healthy(result.retry_after))
            elif not waiter.exclude:
                break  # nothing free at all: later waiters cannot be served either

    def _arm_wakeup(self) -> None:
        """Wake the waiters when a quarantine ends, so a cooled backend can take a probe."""
        if not self._waiters or self._loop is None:
            return
        delay = self._store.next_wakeup()
        if delay is None:
            return
        if self._wakeup is not None:
            self._wakeup.cancel()
        self._wakeup = self._loop.call_later(delay + 0.001, self._on_wakeup)

    def _on_wakeup(self) -> None:
        self._wakeup = None
        self._spawn(self._serve_and_rearm())

    async def _serve_and_rearm(self) -> None:
        await self._serve_waiters()
        self._arm_wakeup()

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def try_lease(self, backend_id: str, request_id: str) -> Lease | None:
        """A lease on this very backend if it can take one now (no waiting), else None."""
        if self._state is not PoolState.OPEN:
            return None
        result = await self._store.acquire(
            self.settings.selection, only=backend_id, holder=request_id
        )
        return Lease(self, result, request_id, 0.0) if isinstance(result, Grant) else None

    # -- elastic membership ----------------------------------------------------------------------
    async def add_backend(self, backend: BackendSpec) -> None:
        """A new backend joins; the first waiter takes it at once."""
        await self._store.add(backend)
        self.backends = (*self.backends, backend)
        if self._waiters:
            await self._serve_waiters()
            self._arm_wakeup()

    async def remove_backend(self, backend_id: str) -> bool:
        """An idle backend leaves; False (and nothing changes) while it is leased."""
        if not await self._store.remove(backend_id):
            return False
        self.backends = tuple(b for b in self.backends if b.id != backend_id)
        return True

    def fail_waiters(self, error: GatewayError) -> int:
        """Fail every waiter with ``error`` when no backend could serve them; returns how many."""
        if self.ready():
            return 0
        failed = 0
        for waiter in list(self._waiters):
            self._waiters.pop(waiter, None)
            if not waiter.future.done():
                waiter.future.set_exception(error)
                failed += 1
        return failed

    # -- operations ----------------------------------------------------------------------------
    async def drain(self, backend_id: str, draining: bool = True) -> None:
        if backend_id not in {b.id for b in self.backends}:
            raise KeyError(backend_id)
        await self._store.set_draining(backend_id, draining)
        if not draining and self._waiters:
            await self._serve_waiters()

    def snapshot(self) -> list[BackendStatus]:
        return self._store.snapshot()

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    def queue(self) -> list[dict[str, object]]:
        now = time.monotonic()
        return [
            {"request_id": w.request_id, "waited_seconds": round(now - w.since, 3)}
            for w in self._waiters
        ]

    def ready(self) -> bool:
        """True when at least one backend could serve (now or after the current leases)."""
        return any(s.state in ("idle", "busy", "half_open") for s in self._store.snapshot())
