"""The pool store: the protocol every implementation follows, and what crosses it.

A store owns pool state: which backends are members, and for each its in-flight leases, health
record and counters. It hands out grants (a backend id and a fencing token) and never waits:
:class:`~proxyfleet.pool.pool.Pool` owns the waiters. It knows no credentials: members are
secret-free (:class:`~proxyfleet.pool.backend.Member`) and each process resolves an id to its
own :class:`~proxyfleet.pool.backend.BackendSpec`.

Whatever changes a backend's availability (a release, a join, a quarantine ending, a drain
lifted), wherever it happens, reaches every watcher through the change feed, so a pool wakes
its waiters when capacity appears anywhere. The in-memory store serves one process; a shared
store implements the same protocol for many (the contract suite in ``tests/pool`` runs against
every store).
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Protocol, Self

from proxyfleet.pool.backend import BackendState, Member
from proxyfleet.pool.health import Outcome
from proxyfleet.pool.selection import Strategy

__all__ = [
    "BackendStatus",
    "ChangeKind",
    "Grant",
    "Holder",
    "Listener",
    "NoCandidate",
    "PoolStore",
    "Unavailable",
]


@dataclass(frozen=True, slots=True)
class Grant:
    """The right to use backend ``backend_id`` until released; ``token`` fences stale releases."""

    backend_id: str
    token: int


class NoCandidate(enum.Enum):
    """Why no grant was given."""

    BUSY = "busy"  # usable backends exist, all at capacity: wait
    NONE = "none"  # no usable backend (outside ``exclude``): do not wait


@dataclass(frozen=True, slots=True)
class Unavailable:
    reason: NoCandidate
    retry_after: float | None = None  # seconds until the first quarantine ends


class ChangeKind(enum.Enum):
    RELEASED = "released"  # a lease ended: capacity may be free
    JOINED = "joined"  # a backend joined the pool
    LEFT = "left"  # a backend left the pool
    COOLED = "cooled"  # a quarantine ended: a half-open trial may be taken
    UNDRAINED = "undrained"  # a drained backend takes leases again


#: Called for every change with its kind and the backend's id, synchronously; it must not
#: block (schedule work instead). Two plain arguments: it runs once per release.
Listener = Callable[[ChangeKind, str], None]


@dataclass(frozen=True, slots=True)
class Holder:
    """Who holds a lease: the request, and for a shared store the process and host."""

    request_id: str
    process: str = ""
    host: str = ""


@dataclass(frozen=True, slots=True)
class BackendStatus:
    """A secret-free snapshot of one backend, for admin output and metrics."""

    id: str
    upstream: str
    state: BackendState
    inflight: int
    max_concurrency: int
    leases_served: int
    failures: int
    consecutive_failures: int
    last_used: float | None  # unix time
    quarantined_until: float | None  # unix time
    serving: tuple[str, ...] = ()  # request ids holding a lease now
    holders: tuple[Holder, ...] = ()  # the same leases, with their process and host


class PoolStore(Protocol):
    """Pool state, used as ``async with store:``; a store used outside that raises."""

    async def __aenter__(self) -> Self: ...
    async def __aexit__(self, *exc: object) -> None: ...

    def watch(self, listener: Listener) -> None:
        """Call ``listener`` with every change from now on (the change feed)."""
        ...

    @property
    def members(self) -> Sequence[Member]:
        """The pool's backends in their fixed order, as of the last change seen."""
        ...

    async def acquire(
        self,
        strategy: Strategy,
        exclude: Collection[str] = (),
        only: str | None = None,
        holder: str = "",
    ) -> Grant | Unavailable:
        """A grant on a usable backend under its cap, chosen by ``strategy``; never waits."""
        ...

    async def release(self, grant: Grant, outcome: Outcome) -> bool:
        """Settle a grant; False when it was already settled or its token is stale."""
        ...

    async def set_draining(self, backend_id: str, draining: bool) -> None: ...

    async def add(self, member: Member) -> None:
        """A new member, first in line; ValueError when its id is taken."""
        ...

    async def remove(self, backend_id: str) -> bool:
        """Take an idle member out; False (nothing changed) while it holds a lease."""
        ...

    async def snapshot(self) -> list[BackendStatus]: ...

    async def want(self, waiting: Callable[[], int]) -> None:
        """This process has waiters (``waiting()`` says how many, for as long as it asks):
        a shared store then tells it of releases elsewhere (and need not while nobody
        waits anywhere)."""
        ...

    async def processes(self) -> list[dict[str, object]]:
        """The processes serving this pool, alive by their heartbeat (this one only, for a
        store of one process): ``process``, ``host``, ``last_seen`` (unix time)."""
        ...

    async def try_lock(self, name: str, ttl: float) -> bool:
        """Take the lock ``name`` for this process (for at most ``ttl`` seconds, so a holder
        that dies frees it); False while another holds it. One per pool: across processes
        for a shared store (elastic provisioning runs once at a time fleet-wide). Once it is
        taken, ``members`` is the fleet's current membership."""
        ...

    async def unlock(self, name: str) -> None:
        """Give back ``name`` if this process holds it."""
        ...
