"""Pool state behind a small interface, and its in-memory implementation.

A store owns, for every backend, its in-flight count, health record and counters, and hands out
grants (backend + fencing token). It never waits: :class:`~proxyfleet.pool.pool.Pool` owns the
waiters. The in-memory store serves one process; a shared store (Redis) implements the same
protocol for many.
"""

from __future__ import annotations

import enum
import itertools
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from proxyfleet.pool.backend import BackendSpec
from proxyfleet.pool.health import (
    Health,
    HealthPolicy,
    HealthRecord,
    Outcome,
    can_lease,
    on_lease,
    settle,
)
from proxyfleet.pool.selection import Strategy, choose

__all__ = ["BackendStatus", "Grant", "MemoryStore", "NoCandidate", "PoolStore", "Unavailable"]


@dataclass(frozen=True, slots=True)
class Grant:
    """The right to use ``backend`` until released; ``token`` fences stale releases."""

    backend: BackendSpec
    token: int


class NoCandidate(enum.Enum):
    """Why no grant was given."""

    BUSY = "busy"  # usable backends exist, all at capacity: wait
    NONE = "none"  # no usable backend (outside ``exclude``): do not wait


@dataclass(frozen=True, slots=True)
class Unavailable:
    reason: NoCandidate
    retry_after: float | None = None  # seconds until the first quarantine ends


@dataclass(frozen=True, slots=True)
class BackendStatus:
    """A secret-free snapshot of one backend, for admin output and metrics."""

    id: str
    upstream: str
    state: str  # idle / busy / unhealthy / half_open / draining
    inflight: int
    max_concurrency: int
    leases_served: int
    failures: int
    consecutive_failures: int
    last_used: float | None  # unix time
    quarantined_until: float | None  # unix time
    serving: tuple[str, ...] = ()  # request ids holding a lease now


class PoolStore(Protocol):
    async def acquire(
        self,
        strategy: Strategy,
        exclude: Collection[str] = (),
        only: str | None = None,
        holder: str = "",
    ) -> Grant | Unavailable: ...
    async def release(self, grant: Grant, outcome: Outcome) -> bool: ...
    async def set_draining(self, backend_id: str, draining: bool) -> None: ...
    async def add(self, backend: BackendSpec) -> None: ...
    async def remove(self, backend_id: str) -> bool: ...
    def snapshot(self) -> list[BackendStatus]: ...
    def next_wakeup(self) -> float | None: ...


@dataclass(slots=True, eq=False)
class _Slot:
    spec: BackendSpec
    index: int
    cap: int
    inflight: int = 0
    health: HealthRecord = field(default_factory=HealthRecord)
    leases_served: int = 0
    failures: int = 0
    last_used: float = 0.0
    tokens: dict[int, str] = field(default_factory=dict)  # live lease token → holder


class MemoryStore:
    """In-process pool state. ``clock`` is monotonic seconds (injectable for tests)."""

    def __init__(
        self,
        backends: Sequence[BackendSpec],
        policy: HealthPolicy,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._slots = [_Slot(spec, i, spec.max_concurrency) for i, spec in enumerate(backends)]
        self._by_id = {slot.spec.id: slot for slot in self._slots}
        if len(self._by_id) != len(self._slots):
            raise ValueError("backend ids must be unique")
        # Backends that may take a lease now, least recently used first.
        self._available: dict[_Slot, None] = dict.fromkeys(self._slots)
        self._policy = policy
        self._tokens = itertools.count(1)
        self._cursor = 0
        self._size = len(self._slots)  # next index; indices stay unique when backends leave
        self._cooling: set[_Slot] = set()  # quarantined backends
        self._now = clock
        self._wall_offset = time.time() - clock()

    # -- the protocol -------------------------------------------------------------------
    async def acquire(
        self,
        strategy: Strategy,
        exclude: Collection[str] = (),
        only: str | None = None,
        holder: str = "",
    ) -> Grant | Unavailable:
        return self.acquire_now(strategy, exclude, only, holder)

    async def release(self, grant: Grant, outcome: Outcome) -> bool:
        return self.release_now(grant, outcome)

    async def set_draining(self, backend_id: str, draining: bool) -> None:
        slot = self._by_id[backend_id]
        if draining:
            slot.health = HealthRecord(Health.DRAINING, slot.health.consecutive_failures)
            self._available.pop(slot, None)
            self._cooling.discard(slot)
        elif slot.health.state is Health.DRAINING:
            slot.health = HealthRecord()
            self._refresh(slot)

    async def add(self, backend: BackendSpec) -> None:
        """A new backend, first in line (it was never used)."""
        if backend.id in self._by_id:
            raise ValueError(f"backend id {backend.id!r} is already in the pool")
        slot = _Slot(backend, self._size, backend.max_concurrency)
        self._size += 1
        self._slots.append(slot)
        self._by_id[backend.id] = slot
        rest = self._available
        self._available = {slot: None}
        self._available.update(rest)

    async def remove(self, backend_id: str) -> bool:
        """Take an idle backend out of the pool; False (nothing changed) while it is leased."""
        slot = self._by_id.get(backend_id)
        if slot is None or slot.inflight:
            return False
        del self._by_id[backend_id]
        self._slots.remove(slot)
        self._available.pop(slot, None)
        self._cooling.discard(slot)
        return True

    def snapshot(self) -> list[BackendStatus]:
        now = self._now()
        return [self._status(slot, now) for slot in self._slots]

    def next_wakeup(self) -> float | None:
        """Seconds until the earliest quarantine ends (a waiter could then take it), if any."""
        ends = [
            s.health.quarantined_until
            for s in self._slots
            if s.health.state is Health.QUARANTINED and s.inflight < s.cap
        ]
        return max(0.0, min(ends) - self._now()) if ends else None

    # -- synchronous core (the in-memory store never waits) -----------------------------
    def acquire_now(
        self,
        strategy: Strategy,
        exclude: Collection[str] = (),
        only: str | None = None,
        holder: str = "",
    ) -> Grant | Unavailable:
        now = self._now()
        if self._cooling:
            self._promote_cooled(now)
        if only is not None:
            one = self._by_id.get(only)
            pool: list[_Slot] = [one] if one is not None else []
            candidates = [s for s in pool if s in self._available]
        elif exclude:
            pool = [s for s in self._slots if s.spec.id not in exclude]
            candidates = [s for s in self._available if s.spec.id not in exclude]
        else:
            pool = self._slots
            candidates = None
        slot = choose(
            strategy,
            self._available if candidates is None else candidates,
            self._cursor,
            self._size,
        )
        if slot is None:
            return self._unavailable(pool, now)
        return self._grant(slot, now, holder)

    def release_now(self, grant: Grant, outcome: Outcome) -> bool:
        """Settle a grant; False when it was already released (idempotent)."""
        slot = self._by_id[grant.backend.id]
        if grant.token not in slot.tokens:
            return False
        del slot.tokens[grant.token]
        slot.inflight -= 1
        now = self._now()
        slot.last_used = now
        if outcome is Outcome.FAILURE:
            slot.failures += 1
        slot.health = settle(slot.health, outcome, now, self._policy)
        self._available.pop(slot, None)
        self._refresh(slot)
        return True

    # -- internals ------------------------------------------------------------------------
    def _grant(self, slot: _Slot, now: float, holder: str) -> Grant:
        token = next(self._tokens)
        slot.tokens[token] = holder
        slot.inflight += 1
        slot.leases_served += 1
        if slot.health.state is not Health.HEALTHY:
            slot.health = on_lease(slot.health, now)
            self._cooling.discard(slot)
        self._cursor = (slot.index + 1) % self._size
        del self._available[slot]
        if slot.inflight < slot.cap and slot.health.state is Health.HEALTHY:
            self._available[slot] = None  # stays available, now most recently used
        return Grant(slot.spec, token)

    def _refresh(self, slot: _Slot) -> None:
        """Put a slot back where its new state belongs, after its health or load changed."""
        state = slot.health.state
        if state is Health.QUARANTINED:
            self._cooling.add(slot)
        else:
            self._cooling.discard(slot)
        if slot.inflight < slot.cap and state is Health.HEALTHY:
            self._available[slot] = None

    def _promote_cooled(self, now: float) -> None:
        """Quarantined backends whose cooldown ended may take one (half-open) lease.

        They go to the front, so the probe happens promptly and a recovered backend returns.
        """
        cooled = [
            slot
            for slot in self._cooling
            if slot.inflight < slot.cap
            and can_lease(slot.health, now)
            and slot not in self._available
        ]
        if cooled:
            cooled.sort(key=lambda slot: slot.index)
            rest = self._available
            self._available = dict.fromkeys(cooled)
            self._available.update(rest)

    def _unavailable(self, pool: Sequence[_Slot], now: float) -> Unavailable:
        usable = False
        cool_ends: list[float] = []
        for slot in pool:
            state = slot.health.state
            if state in (Health.HEALTHY, Health.HALF_OPEN):
                usable = True
            elif state is Health.QUARANTINED:
                if can_lease(slot.health, now):
                    usable = True  # cooled, waiting for its old leases to end
                cool_ends.append(slot.health.quarantined_until)
        if usable:
            return Unavailable(NoCandidate.BUSY)
        retry = max(0.0, min(cool_ends) - now) if cool_ends else None
        return Unavailable(NoCandidate.NONE, retry)

    def _status(self, slot: _Slot, now: float) -> BackendStatus:
        health = slot.health
        if health.state is Health.HEALTHY:
            state = "busy" if slot.inflight else "idle"
        elif health.state is Health.QUARANTINED:
            state = "unhealthy"
        else:
            state = health.state.value
        until = health.quarantined_until
        return BackendStatus(
            id=slot.spec.id,
            upstream=str(slot.spec.describe()["upstream"]),
            state=state,
            inflight=slot.inflight,
            max_concurrency=slot.cap,
            leases_served=slot.leases_served,
            failures=slot.failures,
            consecutive_failures=health.consecutive_failures,
            last_used=slot.last_used + self._wall_offset if slot.last_used else None,
            quarantined_until=until + self._wall_offset
            if health.state is Health.QUARANTINED and until > now
            else None,
            serving=tuple(slot.tokens.values()),
        )
