"""The pool stores every store test runs against: one factory per implementation.

A factory takes the members, the health policy and the clock, and returns an unopened store.
The contract suite (``test_store.py``) and the stateful pool test run once per entry of
:data:`STORES`; a shared store joins this table when it lands.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from proxyfleet.pool import Member, MemoryStore, PoolStore
from proxyfleet.pool.health import HealthPolicy

StoreFactory = Callable[[Sequence[Member], HealthPolicy, Callable[[], float]], PoolStore]


def memory(
    members: Sequence[Member], policy: HealthPolicy, clock: Callable[[], float]
) -> PoolStore:
    return MemoryStore(members, policy, clock)


STORES: dict[str, StoreFactory] = {"memory": memory}
