"""The gateway as a composition root, in-process: its lifecycle, what it answers before start
and while draining, routing by path, and a drained backend's leases."""

from __future__ import annotations

import asyncio

import pytest

from proxyfleet.errors import StateError
from proxyfleet.gateway import GatewayState
from proxyfleet.transports import Answer, MemoryTransport
from tests.asgi import CHAT, call, memory_gateway
from tests.virtual import run

CHAT_PATH = "/v1/chat/completions"


def test_lifecycle_and_what_is_answered_outside_it() -> None:
    async def scenario() -> None:
        transport = MemoryTransport()
        gateway = memory_gateway(transport, 1)
        early = await call(gateway, "POST", CHAT_PATH, CHAT)
        assert await early.status() == 503
        assert (await early.json())["error"]["code"] == "shutting_down"
        await gateway.start()
        assert gateway.state is GatewayState.SERVING
        with pytest.raises(StateError):
            await gateway.start()
        assert await (await call(gateway, "POST", CHAT_PATH, CHAT)).status() == 200
        await gateway.stop()
        assert gateway.state is GatewayState.STOPPED
        assert transport.closed  # the transports it was given are closed with it
        late = await call(gateway, "GET", "/live")
        assert await late.status() == 503
        await gateway.stop()  # idempotent

    run(scenario())


def test_draining_turns_ready_off_while_requests_in_flight_finish() -> None:
    async def scenario() -> None:
        gateway = memory_gateway(MemoryTransport(Answer(delay=5.0)), 1)
        await gateway.start()
        in_flight = await call(gateway, "POST", CHAT_PATH, CHAT)
        await asyncio.sleep(1.0)
        gateway.begin_drain()
        ready = await call(gateway, "GET", "/ready")
        assert await ready.status() == 503
        assert (await ready.json())["reason"] == "gateway is draining"
        assert (await (await call(gateway, "GET", "/live")).json()) == {"status": "alive"}
        assert await in_flight.status() == 200
        assert await in_flight.json() == {}
        await gateway.stop()

    run(scenario())


def test_routing_by_path() -> None:
    async def scenario() -> None:
        gateway = memory_gateway(MemoryTransport(), 1)
        await gateway.start()
        health = await (await call(gateway, "GET", "/health")).json()
        assert (health["status"], health["backends"]) == ("ok", {"idle": 1})
        missing = await call(gateway, "GET", "/nowhere")
        assert await missing.status() == 404
        assert (await missing.json())["error"]["code"] == "not_found"
        remote = await call(gateway, "GET", "/admin/pool", client=("10.1.2.3", 5000))
        assert await remote.status() == 404  # admin is for loopback clients
        await gateway.stop()

    run(scenario())


def test_a_drained_backend_keeps_its_lease_and_takes_no_new_one() -> None:
    async def scenario() -> None:
        transport = MemoryTransport(Answer(delay=2.0))
        gateway = memory_gateway(transport, 2)
        await gateway.start()
        first = await call(gateway, "POST", CHAT_PATH, CHAT)  # takes m0
        await asyncio.sleep(0.1)
        await gateway.pool.drain("m0")
        second = await call(gateway, "POST", CHAT_PATH, CHAT)
        third = await call(gateway, "POST", CHAT_PATH, CHAT)  # waits: m0 drains, m1 busy
        assert [await r.status() for r in (first, second, third)] == [200, 200, 200]
        assert [backend for backend, _ in transport.seen] == ["m0", "m1", "m1"]
        states = {s.id: s.state for s in await gateway.pool.snapshot()}
        assert states == {"m0": "draining", "m1": "idle"}
        await gateway.pool.drain("m0", False)
        assert [s.state for s in await gateway.pool.snapshot()] == ["idle", "idle"]
        await gateway.stop()

    run(scenario())


def test_an_unknown_backend_kind_is_an_upstream_error_not_a_crash() -> None:
    async def scenario() -> None:
        from proxyfleet.pool import BackendSpec

        ghost = BackendSpec("g", "browser://nowhere", kind="browser")
        gateway = memory_gateway(MemoryTransport(), [ghost], pool={"retries": 0})
        await gateway.start()
        reply = await call(gateway, "POST", CHAT_PATH, CHAT)
        assert await reply.status() == 502
        assert "no transport for kind 'browser'" in (await reply.json())["error"]["message"]
        await gateway.stop()

    run(scenario())
