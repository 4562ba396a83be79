"""What the in-memory store adds to the contract (see test_store.py): a synchronous core,
stale releases counted, unique ids, and cooled backends first in line."""

from __future__ import annotations

import pytest

from proxyfleet.pool import Grant, Member, MemoryStore, Outcome
from proxyfleet.pool.health import HealthPolicy


def test_ids_must_be_unique() -> None:
    with pytest.raises(ValueError, match="unique"):
        MemoryStore([Member("a"), Member("a")], HealthPolicy())


async def test_stale_releases_are_counted() -> None:
    async with MemoryStore([Member("a")], HealthPolicy()) as store:
        grant = store.acquire_now("lru")
        assert isinstance(grant, Grant)
        assert store.release_now(grant, Outcome.SUCCESS)
        assert not store.release_now(grant, Outcome.SUCCESS)
        assert not store.release_now(Grant("nobody", 1), Outcome.SUCCESS)
        assert store.stale_releases == 2


async def test_a_cooled_backend_goes_to_the_front_for_its_trial() -> None:
    now = [0.0]
    store = MemoryStore(
        [Member("a"), Member("b"), Member("c")], HealthPolicy(1, 10.0), lambda: now[0]
    )
    async with store:
        first = store.acquire_now("lru")
        assert isinstance(first, Grant)
        assert first.backend_id == "a"
        store.release_now(first, Outcome.FAILURE)  # a: quarantined until 10
        order = []
        for _ in range(2):
            g = store.acquire_now("lru")
            assert isinstance(g, Grant)
            order.append(g.backend_id)
            store.release_now(g, Outcome.SUCCESS)
        assert order == ["b", "c"]
        now[0] = 10.0
        trial = store.acquire_now("lru")
        assert isinstance(trial, Grant)
        assert trial.backend_id == "a"  # the half-open trial comes first
        assert [s.state for s in store.snapshot_now()] == ["half_open", "idle", "idle"]
