"""The operations endpoints, in-process: health states, the queue, admin's loopback rule and
client auth, methods."""

from __future__ import annotations

import asyncio
from pathlib import Path

from proxyfleet.pool import BackendSpec
from proxyfleet.transports import Answer, MemoryTransport, Request
from tests.asgi import CHAT, call, memory_gateway
from tests.virtual import run


def test_health_says_ok_degraded_or_unavailable() -> None:
    async def scenario() -> None:
        def script(backend: BackendSpec, request: Request) -> Answer:
            return Answer(status=500) if backend.id == "m0" else Answer()

        gateway = memory_gateway(
            MemoryTransport(script), 2, pool={"unhealthy_after": 1, "retries": 0}
        )
        await gateway.start()
        health = await (await call(gateway, "GET", "/health")).json()
        assert (health["status"], health["backends"]) == ("ok", {"idle": 2})
        await (await call(gateway, "POST", "/v1/chat/completions", CHAT)).read()  # m0 fails
        health = await (await call(gateway, "GET", "/health")).json()
        assert health["status"] == "degraded"
        assert health["backends"] == {"unhealthy": 1, "idle": 1}
        await gateway.pool.drain("m1")
        reply = await call(gateway, "GET", "/health")
        assert await reply.status() == 503
        assert (await reply.json())["status"] == "unavailable"
        await gateway.stop()

    run(scenario())


def test_the_queue_lists_who_waits_and_for_how_long() -> None:
    async def scenario() -> None:
        gateway = memory_gateway(MemoryTransport(Answer(delay=10.0)), 1, pool={"queue_limit": 5})
        await gateway.start()
        holder = await call(gateway, "POST", "/v1/chat/completions", CHAT)
        await asyncio.sleep(0.1)
        waiter = await call(
            gateway, "POST", "/v1/chat/completions", CHAT, [("X-Request-ID", "waiting-1")]
        )
        await asyncio.sleep(2.0)
        queue = await (await call(gateway, "GET", "/admin/queue")).json()
        assert (queue["waiting"], queue["queue_limit"]) == (1, 5)
        assert queue["waiters"][0]["request_id"] == "waiting-1"
        assert queue["waiters"][0]["waited_seconds"] == 2.0
        pool = await (await call(gateway, "GET", "/admin/pool")).json()
        assert pool["backends"][0]["serving"] != ["waiting-1"]
        assert pool["backends"][0]["kind"] == "memory"
        assert [await holder.status(), await waiter.status()] == [200, 200]
        await gateway.stop()

    run(scenario())


def test_admin_needs_loopback_and_the_client_key(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.write_text("ops-key\n")

    async def scenario() -> None:
        gateway = memory_gateway(MemoryTransport(), 1, server={"auth_keys_file": str(keys)})
        await gateway.start()
        assert await (await call(gateway, "GET", "/admin/pool")).status() == 401
        with_key = await call(gateway, "GET", "/admin/pool", headers=[("X-API-Key", "ops-key")])
        assert await with_key.status() == 200
        far = await call(
            gateway, "GET", "/admin/pool", [("X-API-Key", "ops-key")], client=("192.0.2.1", 9)
        )
        assert await far.status() == 404
        assert await (await call(gateway, "GET", "/live")).status() == 200  # no key needed
        posted = await call(gateway, "POST", "/health", b"{}")
        assert await posted.status() == 400
        assert (await posted.json())["error"]["code"] == "method_not_allowed"
        await gateway.stop()

    run(scenario())


def test_admin_for_remote_clients_when_configured() -> None:
    async def scenario() -> None:
        gateway = memory_gateway(MemoryTransport(), 1, server={"admin_allow_remote": True})
        await gateway.start()
        far = await call(gateway, "GET", "/admin/sessions", client=("192.0.2.1", 9))
        assert await far.json() == {"routes": []}
        await gateway.stop()

    run(scenario())
