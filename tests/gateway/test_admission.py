"""server.max_sessions: requests and WebSocket sessions in flight, beyond it 503."""

from __future__ import annotations

import asyncio

import pytest

from proxyfleet.errors import Overloaded
from proxyfleet.gateway.admission import Admission
from proxyfleet.transports import Answer, MemoryTransport
from tests.asgi import CHAT, call, memory_gateway
from tests.virtual import run


def test_enter_counts_and_refuses_beyond_the_limit() -> None:
    admission = Admission(2)
    admission.enter()
    admission.enter()
    with pytest.raises(Overloaded, match="2 requests in flight") as info:
        admission.enter()
    assert (info.value.status, info.value.code, info.value.retry_after) == (
        503,
        "too_many_sessions",
        1.0,
    )
    admission.leave()
    admission.enter()
    assert admission.active == 2


def test_the_gateway_refuses_the_request_past_the_limit_and_counts_down_again() -> None:
    async def scenario() -> None:
        gateway = memory_gateway(
            MemoryTransport(Answer(delay=5.0)),
            4,
            server={"max_sessions": 2},
        )
        await gateway.start()
        busy = [await call(gateway, "POST", "/v1/chat/completions", CHAT) for _ in range(2)]
        await asyncio.sleep(0.1)
        refused = await call(gateway, "POST", "/v1/chat/completions", CHAT)
        assert await refused.status() == 503
        assert refused.headers["retry-after"] == "1"
        assert (await refused.json())["error"]["code"] == "too_many_sessions"
        assert [await r.status() for r in busy] == [200, 200]
        assert gateway.in_flight == 0
        assert await (await call(gateway, "POST", "/v1/chat/completions", CHAT)).status() == 200
        await gateway.stop()

    run(scenario())
