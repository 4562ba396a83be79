"""The pool: hands out leases on backends, FIFO waiters, timeouts, health-aware.

::

    async with Pool(backends, settings) as pool:
        async with pool.lease(request_id, timeout=5.0) as lease:
            ...  # talk to lease.backend; lease.fail() on an upstream failure

The pool owns its waiters and its store (opened and closed with it); the
:class:`~proxyfleet.pool.store.PoolStore` owns membership and backend state. Waiters are woken
by the store's change feed, so capacity that appears anywhere (a release in another process of
a shared store, a join, a quarantine ending) reaches them. Specs, with their credentials, are
this process's own: the store deals in backend ids.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import math
import time
from collections.abc import AsyncIterator, Callable, Collection, Sequence
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
from proxyfleet.pool.memory import MemoryStore
from proxyfleet.pool.selection import Strategy
from proxyfleet.pool.store import (
    BackendStatus,
    ChangeKind,
    Grant,
    NoCandidate,
    PoolStore,
    Unavailable,
)

__all__ = ["DEFAULTS", "Grower", "Pool", "PoolSettings", "PoolState"]


class Grower(Protocol):
    """Adds backends when the pool runs out (see :mod:`proxyfleet.orchestrator`)."""

    async def demand(self, request_id: str, waiting: int) -> GatewayError | bool:
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
    """How leases are handed out; the defaults are the config's defaults too."""

    selection: Strategy = "lru"
    queue_limit: int = 1000
    lease_timeout: float = 30.0
    unhealthy_after: int = 3
    cooldown: float = 30.0
    settle_grace: float = 2.0  # a backend cut mid-exchange stays leased this long


#: The one source of the pool's defaults (the config model reads them from here).
DEFAULTS = PoolSettings()


class _Waiter:
    __slots__ = ("exclude", "future", "request_id", "since")

    def __init__(
        self,
        future: asyncio.Future[Grant],
        request_id: str,
        exclude: Collection[str],
        since: float,
    ) -> None:
        self.future = future
        self.request_id = request_id
        self.exclude = exclude
        self.since = since  # the event loop's clock


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
        if self._lease is not None:
            await self._lease.__aexit__(*exc)


class Pool:
    """Backends leased one request at a time (or up to each backend's ``max_concurrency``).

    ``backends`` are this process's specs; the store (in memory by default, its health clock
    ``clock``) starts with them as its members unless it is given already populated."""

    def __init__(
        self,
        backends: Sequence[BackendSpec],
        settings: PoolSettings | None = None,
        store: PoolStore | None = None,
        *,
        elastic: bool = False,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not backends and not elastic:
            raise ValueError("a pool needs at least one backend")
        self.settings = settings = settings or DEFAULTS
        self._specs = {spec.id: spec for spec in backends}
        policy = HealthPolicy(settings.unhealthy_after, settings.cooldown)
        self._store: PoolStore = store or MemoryStore(
            [spec.member for spec in backends], policy, clock
        )
        self._store.watch(self._changed)
        self._waiters: dict[_Waiter, None] = {}
        self._state = PoolState.NEW
        self._loop: asyncio.AbstractEventLoop | None = None
        self._serving: asyncio.Task[None] | None = None
        self._again = False
        self._tasks: set[asyncio.Task[None]] = set()
        self._seen: Sequence[object] = ()
        self._backends: tuple[BackendSpec, ...] = ()
        self.grower: Grower | None = None

    # -- lifecycle -------------------------------------------------------------------------
    @property
    def state(self) -> PoolState:
        return self._state

    async def __aenter__(self) -> Pool:
        if self._state is not PoolState.NEW:
            raise StateError(f"pool cannot be opened in state {self._state.value}")
        await self._store.__aenter__()
        self._loop = asyncio.get_running_loop()
        self._state = PoolState.OPEN
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Refuse new leases and fail every waiter; leases held keep working until released."""
        if self._state is not PoolState.OPEN:
            self._state = PoolState.CLOSED
            return
        self._state = PoolState.CLOSED
        for waiter in list(self._waiters):
            if not waiter.future.done():
                waiter.future.set_exception(PoolClosed("the gateway is shutting down"))
        self._waiters.clear()
        for task in [*self._tasks, *([self._serving] if self._serving else [])]:
            task.cancel()
        await self._store.__aexit__(None, None, None)

    # -- membership ------------------------------------------------------------------------------
    @property
    def backends(self) -> tuple[BackendSpec, ...]:
        """The specs of the store's members, in the pool's order."""
        members = self._store.members
        if members is not self._seen:
            self._seen = members
            self._backends = tuple(self.spec(m.id) for m in members)
        return self._backends

    @property
    def size(self) -> int:
        return len(self._store.members)

    def spec(self, backend_id: str) -> BackendSpec:
        """This process's spec of a member (a credential-free one for a member it never had)."""
        spec = self._specs.get(backend_id)
        if spec is None:
            member = next((m for m in self._store.members if m.id == backend_id), None)
            if member is None:
                raise KeyError(backend_id)
            spec = self._specs[backend_id] = BackendSpec.of_member(member, "store")
        return spec

    async def add_backend(self, backend: BackendSpec) -> None:
        """A new backend joins; the first waiter takes it at once."""
        known = self._specs.get(backend.id)
        self._specs[backend.id] = backend
        try:
            await self._store.add(backend.member)
        except ValueError:
            if known is None:
                del self._specs[backend.id]
            else:
                self._specs[backend.id] = known
            raise

    async def remove_backend(self, backend_id: str) -> bool:
        """An idle backend leaves; False (and nothing changes) while it is leased."""
        if not await self._store.remove(backend_id):
            return False
        self._specs.pop(backend_id, None)
        return True

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
        settings = self.settings
        unusable: Unavailable | None = None
        if not self._waiters:
            result = await self._store.acquire(settings.selection, exclude, holder=request_id)
            if isinstance(result, Grant):
                spec = self._specs.get(result.backend_id) or self.spec(result.backend_id)
                return Lease(self, result, spec, request_id, 0.0)
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
            verdict = await self.grower.demand(request_id, len(self._waiters))
            if isinstance(verdict, GatewayError):
                raise verdict
            if unusable is not None and not verdict:
                raise self._no_healthy(unusable.retry_after)
        return await self._wait(
            request_id, settings.lease_timeout if timeout is None else timeout, exclude
        )

    async def try_lease(self, backend_id: str, request_id: str) -> Lease | None:
        """A lease on this very backend if it can take one now (no waiting), else None."""
        if self._state is not PoolState.OPEN:
            return None
        result = await self._store.acquire(
            self.settings.selection, only=backend_id, holder=request_id
        )
        if not isinstance(result, Grant):
            return None
        return Lease(self, result, self.spec(backend_id), request_id, 0.0)

    async def _wait(self, request_id: str, timeout: float, exclude: Collection[str]) -> Lease:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Grant] = loop.create_future()
        waiter = _Waiter(future, request_id, exclude, loop.time())
        self._waiters[waiter] = None
        timer = loop.call_later(timeout, self._expire, waiter, timeout)
        first = len(self._waiters) == 1
        try:
            if first:  # releases elsewhere must reach us from now on
                await self._store.want(lambda: len(self._waiters))
            if first or exclude:
                self._kick()  # capacity may exist for this waiter already
            grant = await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled() and future.exception() is None:
                self._spawn(self._release(future.result(), Outcome.NEUTRAL))
            raise
        finally:
            timer.cancel()
            self._waiters.pop(waiter, None)
            if not future.done():  # left before it was served: a grant on its way goes back
                future.cancel()
        spec = self.spec(grant.backend_id)
        return Lease(self, grant, spec, request_id, loop.time() - waiter.since)

    def _expire(self, waiter: _Waiter, timeout: float) -> None:
        if not waiter.future.done():
            self._waiters.pop(waiter, None)
            waiter.future.set_exception(
                LeaseTimeout(
                    f"no backend became free within {timeout:g}s "
                    f"({self.size} backends, {len(self._waiters)} still waiting)",
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

    def _release_after(self, grant: Grant, outcome: Outcome, delay: float) -> None:
        async def later() -> None:
            await asyncio.sleep(delay)
            await self._release(grant, outcome)

        self._spawn(later())

    def _release_later(self, grant: Grant) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._spawn, self._release(grant, Outcome.NEUTRAL))

    # -- waking waiters ------------------------------------------------------------------------
    def _changed(self, kind: ChangeKind, backend_id: str) -> None:
        """The change feed: capacity may have appeared; the waiters get another look."""
        if self._waiters and self._state is PoolState.OPEN:
            self._kick()

    def _kick(self) -> None:
        """One pass over the waiters at a time; a change during a pass asks for another."""
        if self._serving is None:
            self._serving = asyncio.get_running_loop().create_task(self._serve_passes())
        else:
            self._again = True

    async def _serve_passes(self) -> None:
        try:
            while True:
                self._again = False
                await self._serve_waiters()
                if not self._again:
                    return
        finally:
            self._serving = None

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

    async def serve_waiters(self) -> None:
        """Give every waiter a look at the pool now, returning when that pass is done."""
        if self._waiters and self._state is PoolState.OPEN:
            self._kick()
            while (serving := self._serving) is not None:
                await asyncio.shield(serving)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def fail_waiters(self, error: GatewayError) -> int:
        """Fail every waiter with ``error`` when no backend could serve them; returns how many."""
        if await self.ready():
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
        if backend_id not in {m.id for m in self._store.members}:
            raise KeyError(backend_id)
        await self._store.set_draining(backend_id, draining)

    async def snapshot(self) -> list[BackendStatus]:
        return await self._store.snapshot()

    async def processes(self) -> list[dict[str, object]]:
        """The processes serving this pool (see :meth:`PoolStore.processes`)."""
        return await self._store.processes()

    @contextlib.asynccontextmanager
    async def exclusive(self, name: str, ttl: float) -> AsyncIterator[bool]:
        """``async with pool.exclusive(name, ttl) as mine:`` the store's lock ``name``
        (fleet-wide for a shared store): ``mine`` is False while another holds it."""
        mine = await self._store.try_lock(name, ttl)
        try:
            yield mine
        finally:
            if mine:
                await self._store.unlock(name)

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    def queue(self) -> list[dict[str, object]]:
        now = self._loop.time() if self._loop is not None else 0.0
        return [
            {"request_id": w.request_id, "waited_seconds": round(now - w.since, 3)}
            for w in self._waiters
        ]

    async def ready(self) -> bool:
        """True when at least one backend could serve (now or after the current leases)."""
        return any(s.state.usable for s in await self._store.snapshot())
