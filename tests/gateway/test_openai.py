"""The OpenAI routes in-process, on virtual time: lease timeout, FIFO order, queue limit,
quarantine with cooldown and the half-open trial, as a client sees them (status, error body,
Retry-After) and as the memory backends saw them (arrival order, concurrency)."""

from __future__ import annotations

import asyncio

import pytest

from proxyfleet.pool import BackendSpec
from proxyfleet.transports import Answer, MemoryTransport, Request
from tests.asgi import CHAT, call, memory_gateway
from tests.virtual import run

CHAT_PATH = "/v1/chat/completions"


def test_a_lease_timeout_answers_at_its_deadline_with_retry_after() -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        transport = MemoryTransport(Answer(delay=100.0))  # the backend is busy for 100 s
        gateway = memory_gateway(transport, 1, pool={"lease_timeout": 2.5})
        await gateway.start()
        first = await call(gateway, "POST", CHAT_PATH, CHAT)
        await asyncio.sleep(0.001)
        asked = loop.time()
        second = await call(gateway, "POST", CHAT_PATH, CHAT)
        assert await second.status() == 503
        assert loop.time() - asked == pytest.approx(2.5, abs=0.01)
        assert second.headers["retry-after"] == "1"
        error = (await second.json())["error"]
        assert (error["code"], error["type"]) == ("lease_timeout", "server_error")
        assert "2.5s" in error["message"]
        assert await first.status() == 200  # the holder was never disturbed
        assert transport.requests == {"m0": 1}
        await gateway.stop()

    run(scenario())


def test_waiters_are_served_first_in_first_out_and_one_at_a_time() -> None:
    async def scenario() -> None:
        transport = MemoryTransport(Answer(delay=1.0))
        gateway = memory_gateway(transport, 1)
        await gateway.start()
        replies = []
        for n in range(6):
            replies.append(
                await call(gateway, "POST", CHAT_PATH, CHAT, [("X-Request-ID", f"r{n}")])
            )
            await asyncio.sleep(0)  # arrivals in this order
        assert [await r.status() for r in replies] == [200] * 6
        order = [request.headers["x-request-id"] for _, request in transport.seen]
        assert order == [f"r{n}" for n in range(6)]
        assert transport.peak == {"m0": 1}
        await gateway.stop()

    run(scenario())


def test_a_full_queue_is_refused_at_once() -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        transport = MemoryTransport(Answer(delay=10.0))
        gateway = memory_gateway(transport, 1, pool={"queue_limit": 1})
        await gateway.start()
        holder = await call(gateway, "POST", CHAT_PATH, CHAT)
        await asyncio.sleep(0.001)
        waiter = await call(gateway, "POST", CHAT_PATH, CHAT)
        await asyncio.sleep(0.001)
        asked = loop.time()
        refused = await call(gateway, "POST", CHAT_PATH, CHAT)
        assert await refused.status() == 503
        assert loop.time() == asked  # not a moment of waiting
        assert (await refused.json())["error"]["code"] == "queue_full"
        assert [await holder.status(), await waiter.status()] == [200, 200]
        await gateway.stop()

    run(scenario())


def test_quarantine_lasts_its_cooldown_then_one_half_open_trial_decides() -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        answers = iter([500, 500, 500, 200, 200])

        def script(backend: BackendSpec, request: Request) -> Answer:
            return Answer(status=next(answers))

        gateway = memory_gateway(
            MemoryTransport(script),
            1,
            pool={"unhealthy_after": 2, "cooldown": 30, "retries": 0},
        )
        await gateway.start()
        for _ in range(2):
            assert await (await call(gateway, "POST", CHAT_PATH, CHAT)).status() == 500
        quarantined = loop.time()
        refused = await call(gateway, "POST", CHAT_PATH, CHAT)
        assert await refused.status() == 503
        assert (await refused.json())["error"]["code"] == "no_healthy_backend"
        assert refused.headers["retry-after"] == "30"
        ready = await call(gateway, "GET", "/ready")
        assert await ready.status() == 503
        await asyncio.sleep(29.0)
        late = await call(gateway, "POST", CHAT_PATH, CHAT)
        assert await late.status() == 503
        assert late.headers["retry-after"] == "1"
        await asyncio.sleep(quarantined + 30.0 - loop.time())
        trial = await call(gateway, "POST", CHAT_PATH, CHAT)  # half-open: the third 500
        assert await trial.status() == 500
        again = await call(gateway, "POST", CHAT_PATH, CHAT)  # quarantined anew, for 30 s
        assert await again.status() == 503
        assert again.headers["retry-after"] == "30"
        await asyncio.sleep(30.0)
        assert await (await call(gateway, "POST", CHAT_PATH, CHAT)).status() == 200
        pool = await (await call(gateway, "GET", "/admin/pool")).json()
        assert pool["backends"][0]["state"] == "idle"
        assert pool["backends"][0]["failures"] == 3
        assert await (await call(gateway, "GET", "/ready")).status() == 200
        await gateway.stop()

    run(scenario())


def test_a_waiter_takes_a_backend_the_moment_its_quarantine_ends() -> None:
    """The store's change feed wakes waiters when a cooldown ends (no polling)."""

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        statuses = iter([500, 200, 200, 200])

        def script(backend: BackendSpec, request: Request) -> Answer:
            if backend.id == "m1":
                return Answer(delay=100.0)
            return Answer(status=next(statuses))

        gateway = memory_gateway(
            MemoryTransport(script),
            2,
            pool={"unhealthy_after": 1, "cooldown": 5, "retries": 0, "lease_timeout": 60},
        )
        await gateway.start()
        assert await (await call(gateway, "POST", CHAT_PATH, CHAT)).status() == 500  # m0 out
        failed = loop.time()
        busy = await call(gateway, "POST", CHAT_PATH, CHAT)  # m1, for 100 s
        await asyncio.sleep(0.001)
        waiting = await call(gateway, "POST", CHAT_PATH, CHAT)
        assert await waiting.status() == 200
        assert loop.time() - failed == pytest.approx(5.0, abs=0.01)
        assert await busy.status() == 200
        await gateway.stop()

    run(scenario())


def test_a_websocket_only_route_is_never_forwarded_as_plain_http() -> None:
    async def scenario() -> None:
        transport = MemoryTransport()
        gateway = memory_gateway(transport, 1)
        await gateway.start()
        reply = await call(gateway, "GET", "/v1/responses")
        assert await reply.status() == 426
        assert reply.headers["upgrade"] == "websocket"
        assert (await reply.json())["error"]["code"] == "websocket_required"
        assert transport.seen == []  # no backend saw it
        await gateway.stop()

    run(scenario())
