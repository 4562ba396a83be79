"""The pool around its store: specs resolved per process, waiters woken by the change feed
whatever changed, and its lifecycle."""

from __future__ import annotations

import asyncio
import random
import time

import pytest

from proxyfleet.errors import PoolClosed, StateError
from proxyfleet.pool import BackendSpec, Member, MemoryStore, Pool, PoolState
from proxyfleet.pool.health import HealthPolicy
from tests.pool.stores import STORES
from tests.virtual import run


def spec(name: str, cap: int = 1) -> BackendSpec:
    return BackendSpec(name, f"http://127.0.0.1:1/{name}", (("Authorization", "Bearer k"),), cap)


def test_a_member_this_process_never_had_gets_a_credential_free_spec() -> None:
    async def scenario() -> None:
        store = MemoryStore(
            [Member("mine"), Member("theirs", 2, "http", "http://10.9.9.9/v1")], HealthPolicy()
        )
        async with Pool([spec("mine")], store=store) as pool:
            assert [b.id for b in pool.backends] == ["mine", "theirs"]
            theirs = pool.spec("theirs")
            assert (theirs.base_url, theirs.headers, theirs.max_concurrency) == (
                "http://10.9.9.9/v1",
                (),
                2,
            )
            assert pool.spec("mine").headers  # ours keeps its credentials
            with pytest.raises(KeyError):
                pool.spec("nobody")

    run(scenario())


def test_a_waiter_is_woken_by_a_join_and_by_an_undrain() -> None:
    async def scenario() -> None:
        async with Pool([spec("a")]) as pool:
            held = await pool.acquire("r0")
            joiner = asyncio.ensure_future(pool.acquire("r1"))
            await asyncio.sleep(0)
            await pool.add_backend(spec("b"))
            joined = await joiner
            assert joined.backend.id == "b"
            await pool.drain("a")
            await held.release()
            waiter = asyncio.ensure_future(pool.acquire("r2"))
            await asyncio.sleep(1.0)
            assert not waiter.done()  # a is draining, b is leased
            await pool.drain("a", False)
            undrained = await waiter
            assert undrained.backend.id == "a"
            await undrained.release()
            await joined.release()

    run(scenario())


def test_lifecycle() -> None:
    async def scenario() -> None:
        pool = Pool([spec("a")])
        assert pool.state is PoolState.NEW
        with pytest.raises(StateError):
            await pool.acquire("r")
        async with pool:
            waiter_holder = await pool.acquire("r1")
            waiter = asyncio.ensure_future(pool.acquire("r2"))
            await asyncio.sleep(0)
        assert pool.state is PoolState.CLOSED
        with pytest.raises(PoolClosed):
            await waiter
        with pytest.raises(PoolClosed):
            await pool.acquire("r3")
        await waiter_holder.release()
        with pytest.raises(StateError):
            await pool.__aenter__()

    run(scenario())


def test_waiting_time_is_measured_on_the_loops_clock() -> None:
    async def scenario() -> None:
        async with Pool([spec("a")]) as pool:
            held = await pool.acquire("r0")
            waiter = asyncio.ensure_future(pool.acquire("r1"))
            await asyncio.sleep(3.0)
            assert pool.queue() == [{"request_id": "r1", "waited_seconds": 3.0}]
            await held.release()
            lease = await waiter
            assert lease.wait_seconds == pytest.approx(3.0)
            await lease.release()

    run(scenario())


@pytest.mark.parametrize("store_name", sorted(STORES))
async def test_requests_cancelled_at_any_point_of_their_acquire_leave_no_lease(
    store_name: str,
) -> None:
    """A client that leaves while its request asks for a lease: the lease it was being given,
    whether it was on its way from the store or handed to it as a waiter, goes back at once
    (not when a lease_ttl ends, and never renewed on for nobody)."""
    specs = [spec(f"b{i}") for i in range(3)]
    policy = HealthPolicy()
    store = STORES[store_name]([s.member for s in specs], policy, time.time)
    rng = random.Random(7)
    async with Pool(specs, store=store) as pool:

        async def client(n: int) -> None:
            try:
                async with pool.lease(f"r{n}", timeout=30):
                    await asyncio.sleep(rng.uniform(0, 0.004))
            except asyncio.CancelledError:
                pass

        for _ in range(40):  # rounds of 30 clients for 3 backends, some cancelled anywhere
            tasks = [asyncio.ensure_future(client(n)) for n in range(30)]
            for _ in range(12):
                await asyncio.sleep(rng.uniform(0, 0.003))
                rng.choice(tasks).cancel()
            await asyncio.gather(*tasks)
        deadline = time.monotonic() + 5  # releases in flight land; nothing waits for a ttl
        while any(s.inflight for s in await pool.snapshot()):
            assert time.monotonic() < deadline, await pool.snapshot()
            await asyncio.sleep(0.05)
        async with pool.lease("after", timeout=1):  # and every backend serves again
            pass
