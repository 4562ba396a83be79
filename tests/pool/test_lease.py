"""Leases: released exactly once, outcomes, waiting order, and a warning when forgotten."""

from __future__ import annotations

import asyncio

import pytest

from proxyfleet.errors import LeaseTimeout, NoHealthyBackend, PoolClosed, QueueFull, StateError
from proxyfleet.pool import BackendSpec, Outcome, Pool, PoolSettings


def _pool(n: int = 2, **settings: object) -> Pool:
    backends = [BackendSpec(f"b{i}", f"http://127.0.0.1:1/{i}") for i in range(n)]
    return Pool(backends, PoolSettings(**settings))  # type: ignore[arg-type]


async def test_release_is_idempotent_and_lru_rotates() -> None:
    async with _pool(3) as pool:
        seen = []
        for n in range(6):
            lease = await pool.acquire(f"r{n}")
            seen.append(lease.backend.id)
            await lease.release()
            await lease.release()  # a second release changes nothing
            assert lease.released
        assert seen == ["b0", "b1", "b2", "b0", "b1", "b2"]
        assert all(s.inflight == 0 and s.leases_served == 2 for s in await pool.snapshot())


async def test_waiters_are_served_first_in_first_out() -> None:
    async with _pool(1) as pool:
        holder = await pool.acquire("first")
        order: list[str] = []

        async def wait(name: str) -> None:
            async with pool.lease(name) as lease:
                order.append(lease.request_id)

        tasks = [asyncio.ensure_future(wait(f"w{n}")) for n in range(5)]
        await asyncio.sleep(0)
        assert pool.waiting == 5
        assert [w["request_id"] for w in pool.queue()] == [f"w{n}" for n in range(5)]
        await holder.release()
        await asyncio.gather(*tasks)
        assert order == [f"w{n}" for n in range(5)]


async def test_timeout_queue_limit_and_close() -> None:
    async with _pool(1, queue_limit=1) as pool:
        held = await pool.acquire("held")
        with pytest.raises(LeaseTimeout) as info:
            await pool.acquire("late", timeout=0.05)
        assert info.value.retry_after == 1.0
        waiter = asyncio.ensure_future(pool.acquire("waiting", timeout=5))
        await asyncio.sleep(0)
        with pytest.raises(QueueFull):
            await pool.acquire("one too many")
        await pool.close()
        with pytest.raises(PoolClosed):
            await waiter
        with pytest.raises(PoolClosed):
            await pool.acquire("after close")
        await held.release()  # a lease held across close still releases cleanly


async def test_failures_quarantine_and_no_healthy_backend() -> None:
    async with _pool(1, unhealthy_after=2, cooldown=60) as pool:
        for _ in range(2):
            async with pool.lease("r") as lease:
                lease.fail()
        assert (await pool.snapshot())[0].state == "unhealthy"
        assert not await pool.ready()
        with pytest.raises(NoHealthyBackend) as info:
            await pool.acquire("r")
        assert 59 <= (info.value.retry_after or 0) <= 60


async def test_exception_inside_lease_is_neutral() -> None:
    async with _pool(1, unhealthy_after=1) as pool:
        with pytest.raises(RuntimeError):
            async with pool.lease("r"):
                raise RuntimeError("client went away")
        assert (await pool.snapshot())[0].state == "idle"
        lease = await pool.acquire("r")
        await lease.release(Outcome.FAILURE)
        assert (await pool.snapshot())[0].state == "unhealthy"


async def test_forgotten_lease_warns_and_is_returned() -> None:
    async with _pool(1) as pool:
        lease = await pool.acquire("forgotten")
        with pytest.warns(ResourceWarning, match="never released"):
            del lease  # CPython finalises at once: the lease warns and is given back
        await asyncio.sleep(0.01)
        assert (await pool.snapshot())[0].inflight == 0


async def test_pool_must_be_opened() -> None:
    pool = _pool(1)
    with pytest.raises(StateError):
        await pool.acquire("r")


def test_a_cut_lease_keeps_its_backend_for_the_settle_grace() -> None:
    from tests.virtual import run

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        async with _pool(1, settle_grace=2.5) as pool:
            lease = await pool.acquire("cut")
            lease.cut()  # e.g. a read timeout: the upstream may still be at it
            released = loop.time()
            await lease.release()  # returns at once: the backend is freed in the background
            assert loop.time() == released
            assert (await pool.snapshot())[0].inflight == 1
            nxt = await pool.acquire("next")
            assert loop.time() - released == pytest.approx(2.5, abs=0.01)
            await nxt.release()

    run(scenario())
