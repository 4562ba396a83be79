"""The backend pool: backends, leases, selection, health and the state store."""

from proxyfleet.pool.backend import BackendSpec
from proxyfleet.pool.health import Outcome
from proxyfleet.pool.lease import Lease
from proxyfleet.pool.pool import Pool, PoolSettings, PoolState
from proxyfleet.pool.store import BackendStatus, MemoryStore, PoolStore

__all__ = [
    "BackendSpec",
    "BackendStatus",
    "Lease",
    "MemoryStore",
    "Outcome",
    "Pool",
    "PoolSettings",
    "PoolState",
    "PoolStore",
]
