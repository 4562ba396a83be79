"""The store contract: what every pool store does, run against each one in ``stores.STORES``.

Grants by backend id with fencing tokens, the three strategies, caps, ``exclude`` and
``only``, health settled by outcomes, quarantine ending on the store's clock (and saying so on
the change feed), draining, membership, snapshots and the lifecycle.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

import pytest

from proxyfleet.errors import StateError
from proxyfleet.pool import BackendState, ChangeKind, Grant, Member, Outcome
from proxyfleet.pool.health import HealthPolicy
from proxyfleet.pool.store import NoCandidate, PoolStore, Unavailable
from tests.pool.stores import OVER_A_SOCKET, STORES, StoreFactory
from tests.virtual import run


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


POLICY = HealthPolicy(2, 30.0)


def members(*caps: int) -> list[Member]:
    return [Member(f"b{i}", cap, "http", f"http://127.0.0.1:1/{i}") for i, cap in enumerate(caps)]


@pytest.fixture(params=sorted(STORES))
def make(request: pytest.FixtureRequest) -> StoreFactory:
    return STORES[request.param]


def store_of(
    make: StoreFactory,
    caps: Sequence[int] = (1, 1, 1),
    policy: HealthPolicy = POLICY,
    clock: Callable[[], float] | None = None,
) -> PoolStore:
    return make(members(*caps), policy, clock or Clock())


async def grant(store: PoolStore, strategy: str = "lru", **kwargs: object) -> Grant:
    result = await store.acquire(strategy, **kwargs)  # type: ignore[arg-type]
    assert isinstance(result, Grant), result
    return result


async def test_grants_name_backends_by_id_and_lru_rotates(make: StoreFactory) -> None:
    async with store_of(make) as store:
        seen = []
        for _ in range(6):
            g = await grant(store, holder="r")
            seen.append(g.backend_id)
            assert await store.release(g, Outcome.SUCCESS)
        assert seen == ["b0", "b1", "b2", "b0", "b1", "b2"]


async def test_a_stale_or_second_release_is_refused(make: StoreFactory) -> None:
    async with store_of(make) as store:
        g = await grant(store)
        assert await store.release(g, Outcome.SUCCESS)
        assert not await store.release(g, Outcome.SUCCESS)  # already settled
        forged = Grant(g.backend_id, g.token + 1000)
        assert not await store.release(forged, Outcome.FAILURE)  # a token not handed out
        status = {s.id: s for s in await store.snapshot()}[g.backend_id]
        assert (status.inflight, status.failures) == (0, 0)


async def test_tokens_are_unique_across_backends(make: StoreFactory) -> None:
    async with store_of(make, caps=(3, 3)) as store:
        grants = [await grant(store) for _ in range(6)]
        assert len({g.token for g in grants}) == 6


async def test_caps_hold_and_busy_is_not_none(make: StoreFactory) -> None:
    async with store_of(make, caps=(2, 1)) as store:
        held = [await grant(store) for _ in range(3)]
        assert sorted(g.backend_id for g in held) == ["b0", "b0", "b1"]
        refused = await store.acquire("lru")
        assert refused == Unavailable(NoCandidate.BUSY)
        await store.release(held[0], Outcome.SUCCESS)
        assert (await grant(store)).backend_id == held[0].backend_id


async def test_round_robin_walks_the_fixed_order(make: StoreFactory) -> None:
    async with store_of(make, caps=(1, 1, 1, 1)) as store:
        order = []
        for _ in range(8):
            g = await grant(store, "round-robin")
            order.append(g.backend_id)
            await store.release(g, Outcome.SUCCESS)
        assert order == ["b0", "b1", "b2", "b3"] * 2


async def test_least_busy_takes_the_lowest_load(make: StoreFactory) -> None:
    async with store_of(make, caps=(4, 2)) as store:
        first = [await grant(store, "least-busy") for _ in range(3)]
        # loads 0/4 and 0/2: a tie, the least recently used wins; then 1/4 vs 0/2; then 1/4 vs 1/2
        assert [g.backend_id for g in first] == ["b0", "b1", "b0"]


async def test_exclude_and_only(make: StoreFactory) -> None:
    async with store_of(make) as store:
        g = await grant(store, exclude=["b0", "b1"])
        assert g.backend_id == "b2"
        none = await store.acquire("lru", exclude=["b0", "b1", "b2"])
        assert isinstance(none, Unavailable)
        assert none.reason is NoCandidate.NONE
        assert (await grant(store, only="b1")).backend_id == "b1"
        busy = await store.acquire("lru", only="b1")
        assert isinstance(busy, Unavailable)
        assert isinstance(await store.acquire("lru", only="nobody"), Unavailable)


async def test_failures_quarantine_and_report_when_it_ends(make: StoreFactory) -> None:
    clock = Clock()
    async with store_of(make, caps=(1,), clock=clock) as store:
        for _ in range(2):
            await store.release(await grant(store), Outcome.FAILURE)
        (status,) = await store.snapshot()
        assert status.state is BackendState.UNHEALTHY
        assert status.quarantined_until == pytest.approx(clock.now + 30.0)
        assert (status.failures, status.consecutive_failures) == (2, 2)
        none = await store.acquire("lru")
        assert isinstance(none, Unavailable)
        assert none.reason is NoCandidate.NONE
        assert none.retry_after == pytest.approx(30.0)
        clock.now += 30.0
        trial = await grant(store)  # half-open
        assert (await store.snapshot())[0].state is BackendState.HALF_OPEN
        await store.release(trial, Outcome.SUCCESS)
        assert (await store.snapshot())[0].state is BackendState.IDLE


async def test_a_neutral_outcome_says_nothing(make: StoreFactory) -> None:
    async with store_of(make, caps=(1,), policy=HealthPolicy(1, 30.0)) as store:
        await store.release(await grant(store), Outcome.NEUTRAL)
        (status,) = await store.snapshot()
        assert (status.state, status.failures) == (BackendState.IDLE, 0)


async def test_draining_keeps_leases_and_takes_no_new_one(make: StoreFactory) -> None:
    changes: list[tuple[ChangeKind, str]] = []
    async with store_of(make, caps=(2,)) as store:
        store.watch(lambda kind, backend: changes.append((kind, backend)))
        held = await grant(store)
        await store.set_draining("b0", True)
        assert (await store.snapshot())[0].state is BackendState.DRAINING
        assert isinstance(await store.acquire("lru"), Unavailable)
        await store.release(held, Outcome.SUCCESS)  # its lease still settles
        await store.set_draining("b0", False)
        assert (await store.snapshot())[0].state is BackendState.IDLE
        assert changes == [(ChangeKind.RELEASED, "b0"), (ChangeKind.UNDRAINED, "b0")]


async def test_membership_joins_first_in_line_and_leaves_only_when_idle(
    make: StoreFactory,
) -> None:
    changes: list[tuple[ChangeKind, str]] = []
    async with store_of(make, caps=(1, 1)) as store:
        store.watch(lambda kind, backend: changes.append((kind, backend)))
        await store.add(Member("new", 1, "http", "http://127.0.0.1:1/new"))
        assert [m.id for m in store.members] == ["b0", "b1", "new"]
        with pytest.raises(ValueError, match="already in the pool"):
            await store.add(Member("new"))
        g = await grant(store)
        assert g.backend_id == "new"  # never used: least recently used of all
        assert not await store.remove("new")  # leased
        await store.release(g, Outcome.SUCCESS)
        assert await store.remove("new")
        assert not await store.remove("new")
        assert [m.id for m in store.members] == ["b0", "b1"]
        assert [s.id for s in await store.snapshot()] == ["b0", "b1"]
        assert changes == [
            (ChangeKind.JOINED, "new"),
            (ChangeKind.RELEASED, "new"),
            (ChangeKind.LEFT, "new"),
        ]


async def test_snapshots_name_who_holds_each_lease(make: StoreFactory) -> None:
    clock = Clock()
    async with store_of(make, caps=(2, 1), clock=clock) as store:
        await grant(store, holder="req-1")
        await grant(store, holder="req-2")
        statuses = {s.id: s for s in await store.snapshot()}
        assert sorted(statuses["b0"].serving + statuses["b1"].serving) == ["req-1", "req-2"]
        assert statuses["b0"].upstream == "http://127.0.0.1:1/0"  # public, from the member
        assert all(s.last_used is None for s in statuses.values())


async def _quarantine_end(make: StoreFactory, cooldown: float) -> tuple[float, list[float]]:
    loop = asyncio.get_running_loop()
    cooled: list[float] = []
    store = make(members(1), HealthPolicy(1, cooldown), loop.time)
    async with store:
        store.watch(
            lambda kind, _: cooled.append(loop.time()) if kind is ChangeKind.COOLED else None
        )
        failed_at = loop.time()
        await store.release(await grant(store), Outcome.FAILURE)
        await asyncio.sleep(cooldown * 1.6)
    return failed_at, cooled


def test_a_quarantine_end_reaches_the_watchers_on_the_stores_clock() -> None:
    """On virtual time for an in-process store (exactly at the end); a store across a socket
    cannot run on virtual time (its answers take real time), so it runs on the real clock."""
    for name, make in STORES.items():
        if name in OVER_A_SOCKET:
            failed_at, cooled = asyncio.run(_quarantine_end(make, 0.5))
            assert len(cooled) == 1, cooled
            assert failed_at + 0.5 <= cooled[0] < failed_at + 0.8  # fired at the end, once
        else:
            failed_at, cooled = run(_quarantine_end(make, 12.5))
            assert cooled == [pytest.approx(failed_at + 12.5, abs=0.01)]


async def test_a_store_refuses_use_outside_its_lifecycle(make: StoreFactory) -> None:
    store = store_of(make)
    with pytest.raises(StateError):
        await store.acquire("lru")
    async with store:
        pass
    with pytest.raises(StateError):
        await store.acquire("lru")


async def test_a_lock_is_held_by_one_at_a_time(make: StoreFactory) -> None:
    async with store_of(make) as store:
        assert await store.try_lock("provision", 30.0)
        assert not await store.try_lock("provision", 30.0)  # held
        assert await store.try_lock("other", 30.0)  # locks are by name
        await store.unlock("provision")
        assert await store.try_lock("provision", 30.0)
