"""The pool stores every store test runs against: one factory per implementation.

A factory takes the members, the health policy and the clock, and returns an unopened store.
The contract suite (``test_store.py``) and the stateful pool test run once per entry of
:data:`STORES`: the in-memory store, and the Redis store on a real ``redis-server`` (one per
test session, a fresh key prefix per store).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from proxyfleet.pool import Member, MemoryStore, PoolStore
from proxyfleet.pool.health import HealthPolicy
from proxyfleet.pool.redis import RedisStore
from tests import redisd

StoreFactory = Callable[[Sequence[Member], HealthPolicy, Callable[[], float]], PoolStore]


def memory(
    members: Sequence[Member], policy: HealthPolicy, clock: Callable[[], float]
) -> PoolStore:
    return MemoryStore(members, policy, clock)


def redis(members: Sequence[Member], policy: HealthPolicy, clock: Callable[[], float]) -> PoolStore:
    return RedisStore(members, policy, clock, url=redisd.shared().url, key_prefix=redisd.prefix())


STORES: dict[str, StoreFactory] = {"memory": memory, "redis": redis}
#: Stores whose answers cross a socket: they cannot run on a virtual clock that jumps.
OVER_A_SOCKET = frozenset({"redis"})
