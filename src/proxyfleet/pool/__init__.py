"""The backend pool: backends, leases, selection, health and the state store.

A :class:`Pool` hands out :class:`Lease` objects on backends; its state lives in a
:class:`PoolStore` (:class:`MemoryStore` for one process) that deals in backend ids and wakes
waiters through a change feed. Selection and health transitions are pure functions.
"""

from proxyfleet.pool.backend import BackendSpec, BackendState, Cookie, Member
from proxyfleet.pool.health import Outcome
from proxyfleet.pool.lease import Lease
from proxyfleet.pool.memory import MemoryStore
from proxyfleet.pool.pool import DEFAULTS, Pool, PoolSettings, PoolState
from proxyfleet.pool.store import BackendStatus, ChangeKind, Grant, PoolStore

__all__ = [
    "DEFAULTS",
    "BackendSpec",
    "BackendState",
    "BackendStatus",
    "ChangeKind",
    "Cookie",
    "Grant",
    "Lease",
    "Member",
    "MemoryStore",
    "Outcome",
    "Pool",
    "PoolSettings",
    "PoolState",
    "PoolStore",
]
