"""The prober: every interval, each free backend is leased and checked; busy ones are skipped
(their requests are the probe); a failed check counts as a failure."""

from __future__ import annotations

import asyncio
import contextlib

from proxyfleet.pool import BackendSpec, Pool, PoolSettings
from proxyfleet.pool.prober import Prober
from tests.virtual import run

SPECS = [BackendSpec(f"b{i}", f"http://127.0.0.1:1/{i}") for i in range(3)]


def test_probe_once_checks_the_free_backends_and_settles_their_health() -> None:
    async def scenario() -> None:
        checked: list[str] = []

        async def check(backend: BackendSpec) -> bool:
            checked.append(backend.id)
            return backend.id != "b2"

        async with Pool(SPECS, PoolSettings(unhealthy_after=1)) as pool:
            busy = await pool.acquire("holder")  # b0
            results = await Prober(pool, check, 10.0).probe_once()
            assert results == {"b0": None, "b1": True, "b2": False}
            assert checked == ["b1", "b2"]
            states = {s.id: s.state for s in await pool.snapshot()}
            assert states == {"b0": "busy", "b1": "idle", "b2": "unhealthy"}
            await busy.release()

    run(scenario())


def test_it_runs_every_interval_until_it_stops() -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        times: list[float] = []

        async def check(backend: BackendSpec) -> bool:
            times.append(round(loop.time(), 3))
            return True

        async with Pool(SPECS[:1]) as pool:
            async with Prober(pool, check, 5.0):
                await asyncio.sleep(16.0)
            await asyncio.sleep(20.0)
        assert times == [5.0, 10.0, 15.0]

    run(scenario())


def test_a_check_that_raises_releases_its_lease_as_neutral() -> None:
    async def scenario() -> None:
        async def check(backend: BackendSpec) -> bool:
            raise asyncio.CancelledError

        async with Pool(SPECS[:1], PoolSettings(unhealthy_after=1)) as pool:
            with contextlib.suppress(asyncio.CancelledError):
                await Prober(pool, check, 1.0).probe_once()
            (status,) = await pool.snapshot()
            assert (status.state, status.inflight, status.failures) == ("idle", 0, 0)

    run(scenario())
