"""Active health probes through the transport interface: a real lease per probe, a failing
check quarantines, a passing one brings a backend back with no client traffic."""

from __future__ import annotations

import asyncio

from proxyfleet.transports import Answer, MemoryTransport
from tests.asgi import call, memory_gateway
from tests.conftest import Processes
from tests.virtual import run


def per_backend(**answers: Answer) -> MemoryTransport:
    return MemoryTransport(lambda backend, request: answers.get(backend.id, Answer()))


async def pool_json(gateway: object) -> dict[str, dict[str, object]]:
    reply = await call(gateway, "GET", "/admin/pool")  # type: ignore[arg-type]
    return {b["id"]: b for b in (await reply.json())["backends"]}


def test_a_probe_takes_a_real_lease_through_the_transport() -> None:
    async def scenario() -> None:
        transport = per_backend(m1=Answer(status=500))
        gateway = memory_gateway(
            transport,
            2,
            pool={
                "probe": {"enabled": True, "interval": 10, "path": "/models"},
                "unhealthy_after": 1,
            },
        )
        await gateway.start()
        await asyncio.sleep(10.5)
        probes = [(b, r.method, r.target) for b, r in transport.seen]
        assert probes == [("m0", "GET", "/models"), ("m1", "GET", "/models")]
        pool = await pool_json(gateway)
        assert (pool["m0"]["state"], pool["m1"]["state"]) == ("idle", "unhealthy")
        await gateway.stop()

    run(scenario())


def test_a_probe_that_hangs_fails_at_its_timeout() -> None:
    async def scenario() -> None:
        transport = per_backend(m0=Answer(delay=100.0))
        gateway = memory_gateway(
            transport,
            1,
            pool={
                "probe": {"enabled": True, "interval": 10, "timeout": 2},
                "unhealthy_after": 1,
            },
        )
        await gateway.start()
        await asyncio.sleep(12.5)  # one probe at 10 s, given up at 12 s
        assert (await pool_json(gateway))["m0"]["state"] == "unhealthy"
        await gateway.stop()

    run(scenario())


async def test_active_probe_brings_a_backend_back_without_traffic(procs: Processes) -> None:
    mock = procs.mock()
    port = int(mock.url.split(":")[2].split("/")[0])
    gateway = procs.gateway(
        "--upstream",
        mock.url,
        env={
            "PROXYFLEET_POOL__PROBE__ENABLED": "true",
            "PROXYFLEET_POOL__PROBE__INTERVAL": "0.2",
            "PROXYFLEET_POOL__UNHEALTHY_AFTER": "1",
            "PROXYFLEET_POOL__COOLDOWN": "0.3",
        },
    )
    mock.popen.kill()
    mock.popen.wait(5)
    for _ in range(50):  # the probe finds it dead
        if gateway.get_json("/admin/pool")["backends"][0]["state"] == "unhealthy":
            break
        await asyncio.sleep(0.1)
    else:
        raise AssertionError(gateway.get_json("/admin/pool"))
    procs.mock(port=port)
    for _ in range(50):  # … and alive again, with no client request in between
        if gateway.get_json("/admin/pool")["backends"][0]["state"] == "idle":
            break
        await asyncio.sleep(0.1)
    else:
        raise AssertionError(gateway.get_json("/admin/pool"))
    assert gateway.get_json("/ready")["status"] == "ready"
