"""The in-memory pool store: one process's pool state, no I/O.

Every operation completes without waiting; the coroutine methods of the protocol wrap a
synchronous core (``acquire_now``, ``release_now``…). Health deadlines are unix times read from
``clock`` (``time.time``; tests give a virtual one), and when a quarantine ends a timer on the
event loop tells the watchers (``COOLED``), so waiters can take the half-open trial.
"""

from __future__ import annotations

import asyncio
import enum
import itertools
import os
import socket
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import Self

from proxyfleet.errors import StateError
from proxyfleet.pool.backend import Member
from proxyfleet.pool.health import (
    Health,
    HealthPolicy,
    HealthRecord,
    Outcome,
    can_lease,
    on_lease,
    settle,
    state_of,
)
from proxyfleet.pool.selection import Strategy, choose
from proxyfleet.pool.store import (
    BackendStatus,
    ChangeKind,
    Grant,
    Holder,
    Listener,
    NoCandidate,
    Unavailable,
)

__all__ = ["MemoryStore"]

_HOST = socket.gethostname()
_PROCESS = f"{_HOST}:{os.getpid()}"


class _State(enum.Enum):
    NEW = "new"
    OPEN = "open"
    CLOSED = "closed"


@dataclass(slots=True, eq=False)
class _Slot:
    member: Member
    index: int
    cap: int
    inflight: int = 0
    health: HealthRecord = field(default_factory=HealthRecord)
    leases_served: int = 0
    failures: int = 0
    last_used: float = 0.0  # unix time
    tokens: dict[int, str] = field(default_factory=dict)  # live lease token → holder


class MemoryStore:
    """In-process pool state for ``members``, health by ``policy``, times from ``clock``."""

    def __init__(
        self,
        members: Sequence[Member],
        policy: HealthPolicy,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._slots = [_Slot(m, i, m.max_concurrency) for i, m in enumerate(members)]
        self._by_id = {slot.member.id: slot for slot in self._slots}
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
        self._listeners: list[Listener] = []
        self._members: tuple[Member, ...] = tuple(members)
        self._state = _State.NEW
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self.stale_releases = 0  # releases refused: already settled, or a token not ours
        self._locks: dict[str, float] = {}  # name → until when it is held

    # -- lifecycle ---------------------------------------------------------------------------
    async def __aenter__(self) -> Self:
        if self._state is not _State.NEW:
            raise StateError(f"store cannot be opened in state {self._state.value}")
        self._loop = asyncio.get_running_loop()
        self._state = _State.OPEN
        self._arm()
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._state = _State.CLOSED
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def watch(self, listener: Listener) -> None:
        self._listeners.append(listener)

    @property
    def members(self) -> Sequence[Member]:
        return self._members

    # -- the protocol -------------------------------------------------------------------------
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
            self._tell(ChangeKind.UNDRAINED, backend_id)

    async def add(self, member: Member) -> None:
        if member.id in self._by_id:
            raise ValueError(f"backend id {member.id!r} is already in the pool")
        slot = _Slot(member, self._size, member.max_concurrency)
        self._size += 1
        self._slots.append(slot)
        self._by_id[member.id] = slot
        rest = self._available
        self._available = {slot: None}
        self._available.update(rest)
        self._members = (*self._members, member)
        self._tell(ChangeKind.JOINED, member.id)

    async def remove(self, backend_id: str) -> bool:
        slot = self._by_id.get(backend_id)
        if slot is None or slot.inflight:
            return False
        del self._by_id[backend_id]
        self._slots.remove(slot)
        self._available.pop(slot, None)
        self._cooling.discard(slot)
        self._members = tuple(m for m in self._members if m.id != backend_id)
        self._tell(ChangeKind.LEFT, backend_id)
        return True

    async def snapshot(self) -> list[BackendStatus]:
        return self.snapshot_now()

    async def want(self, waiting: Callable[[], int]) -> None:
        pass  # every release here is heard here

    async def processes(self) -> list[dict[str, object]]:
        return [{"process": _PROCESS, "host": _HOST, "last_seen": self._now()}]

    async def try_lock(self, name: str, ttl: float) -> bool:
        now = self._now()
        if self._locks.get(name, 0.0) > now:
            return False
        self._locks[name] = now + ttl
        return True

    async def unlock(self, name: str) -> None:
        self._locks.pop(name, None)

    # -- synchronous core ------------------------------------------------------------------------
    def acquire_now(
        self,
        strategy: Strategy,
        exclude: Collection[str] = (),
        only: str | None = None,
        holder: str = "",
    ) -> Grant | Unavailable:
        if self._state is not _State.OPEN:
            raise StateError(f"store is {self._state.value}: use 'async with store'")
        now = self._now()
        if self._cooling:
            self._promote_cooled(now)
        if only is not None:
            one = self._by_id.get(only)
            pool: list[_Slot] = [one] if one is not None else []
            candidates = [s for s in pool if s in self._available]
        elif exclude:
            pool = [s for s in self._slots if s.member.id not in exclude]
            candidates = [s for s in self._available if s.member.id not in exclude]
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
        slot = self._by_id.get(grant.backend_id)
        if slot is None or grant.token not in slot.tokens:
            self.stale_releases += 1
            return False
        del slot.tokens[grant.token]
        slot.inflight -= 1
        now = self._now()
        slot.last_used = now
        if outcome is Outcome.FAILURE:
            slot.failures += 1
        before = slot.health
        health = slot.health = settle(before, outcome, now, self._policy)
        self._available.pop(slot, None)
        self._refresh(slot)
        if health is not before and health.state is Health.QUARANTINED:
            self._arm()
        for listener in self._listeners:  # _tell, inlined: this runs once per request
            listener(ChangeKind.RELEASED, grant.backend_id)
        return True

    def snapshot_now(self) -> list[BackendStatus]:
        now = self._now()
        return [self._status(slot, now) for slot in self._slots]

    # -- internals ---------------------------------------------------------------------------
    def _tell(self, kind: ChangeKind, backend_id: str) -> None:
        for listener in self._listeners:
            listener(kind, backend_id)

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
        return Grant(slot.member.id, token)

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

        They go to the front, so the trial happens promptly and a recovered backend returns.
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

    def _arm(self) -> None:
        """A timer for the earliest quarantine end still ahead, which tells the watchers."""
        loop = self._loop
        if loop is None or self._state is not _State.OPEN:
            return
        now = self._now()
        ends = [
            s.health.quarantined_until
            for s in self._cooling
            if s.health.state is Health.QUARANTINED and s.health.quarantined_until > now
        ]
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if ends:
            self._timer = loop.call_later(min(ends) - now + 0.001, self._cooled)

    def _cooled(self) -> None:
        self._timer = None
        now = self._now()
        for slot in sorted(self._cooling, key=lambda s: s.index):
            if can_lease(slot.health, now) and slot.inflight < slot.cap:
                self._tell(ChangeKind.COOLED, slot.member.id)
        self._arm()

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
        until = health.quarantined_until
        return BackendStatus(
            id=slot.member.id,
            upstream=slot.member.url,
            state=state_of(health, slot.inflight),
            inflight=slot.inflight,
            max_concurrency=slot.cap,
            leases_served=slot.leases_served,
            failures=slot.failures,
            consecutive_failures=health.consecutive_failures,
            last_used=slot.last_used or None,
            quarantined_until=until if health.state is Health.QUARANTINED and until > now else None,
            serving=tuple(slot.tokens.values()),
            holders=tuple(Holder(rid, _PROCESS, _HOST) for rid in slot.tokens.values()),
        )
