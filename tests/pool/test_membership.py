"""Backends joining and leaving a running pool (what an elastic pool does)."""

from __future__ import annotations

import asyncio

import pytest

from proxyfleet.errors import NoHealthyBackend, ProvisioningFailed
from proxyfleet.pool import BackendSpec, Pool, PoolSettings


def spec(name: str) -> BackendSpec:
    return BackendSpec(name, f"http://127.0.0.1:1/{name}")


async def test_an_empty_elastic_pool_opens_and_refuses_without_a_grower() -> None:
    with pytest.raises(ValueError, match="at least one backend"):
        Pool([])
    async with Pool([], elastic=True) as pool:
        assert not await pool.ready()
        with pytest.raises(NoHealthyBackend):
            await pool.acquire("r1")


async def test_a_new_backend_goes_to_the_first_waiter() -> None:
    async with Pool([spec("a")], PoolSettings(lease_timeout=5)) as pool:
        held = await pool.acquire("r0")
        waiter = asyncio.ensure_future(pool.acquire("r1"))
        await asyncio.sleep(0)
        assert pool.waiting == 1
        await pool.add_backend(spec("b"))
        lease = await waiter
        assert lease.backend.id == "b"
        assert [b.id for b in pool.backends] == ["a", "b"]
        with pytest.raises(ValueError, match="already in the pool"):
            await pool.add_backend(spec("b"))
        await lease.release()
        await held.release()


@pytest.mark.parametrize("selection", ["lru", "round-robin", "least-busy"])
async def test_removal_waits_for_the_lease_and_selection_keeps_working(selection: str) -> None:
    async with Pool(
        [spec("a"), spec("b"), spec("c")],
        PoolSettings(selection=selection),  # type: ignore[arg-type]
    ) as pool:
        lease = await pool.acquire("r0")
        busy = lease.backend.id
        assert not await pool.remove_backend(busy)  # leased: stays
        idle = next(b.id for b in pool.backends if b.id != busy)
        assert await pool.remove_backend(idle)
        assert not await pool.remove_backend(idle)  # already gone
        assert idle not in {s.id for s in await pool.snapshot()}
        await lease.release()
        await pool.add_backend(spec("d"))
        seen = set()
        for n in range(6):
            other = await pool.acquire(f"r{n + 1}")
            seen.add(other.backend.id)
            await other.release()
        assert seen == {b.id for b in pool.backends}
        assert idle not in seen


async def test_fail_waiters_only_when_nothing_could_serve_them() -> None:
    async with Pool([spec("a")], PoolSettings(lease_timeout=5)) as pool:
        held = await pool.acquire("r0")
        waiter = asyncio.ensure_future(pool.acquire("r1"))
        await asyncio.sleep(0)
        assert await pool.fail_waiters(ProvisioningFailed("no")) == 0  # "a" will free up
        await pool.drain("a")
        assert await pool.fail_waiters(ProvisioningFailed("no")) == 1
        with pytest.raises(ProvisioningFailed):
            await waiter
        await held.release()
