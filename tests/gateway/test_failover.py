"""The one failover routine, in-process on memory backends: what is retried, on which backend,
what counts against a backend's health, and that nothing is retried after the first byte."""

from __future__ import annotations

import json

from proxyfleet.pool import BackendSpec
from proxyfleet.transports import Answer, MemoryTransport, Request
from tests.asgi import CHAT, call, memory_gateway
from tests.virtual import run

CHAT_PATH = "/v1/chat/completions"
OK = Answer(chunks=(b'{"ok": true}',))


def per_backend(**answers: Answer) -> MemoryTransport:
    return MemoryTransport(lambda backend, request: answers.get(backend.id, OK))


async def pool_json(gateway: object) -> dict[str, dict[str, object]]:
    reply = await call(gateway, "GET", "/admin/pool")  # type: ignore[arg-type]
    return {b["id"]: b for b in (await reply.json())["backends"]}


def test_a_backend_that_cannot_be_reached_fails_over_and_counts_a_failure() -> None:
    async def scenario() -> None:
        transport = per_backend(m0=Answer(fault="refuse"))
        gateway = memory_gateway(transport, 2)
        await gateway.start()
        reply = await call(gateway, "POST", CHAT_PATH, CHAT)
        assert await reply.status() == 200
        assert await reply.json() == {"ok": True}
        assert [backend for backend, _ in transport.seen] == ["m0", "m1"]
        pool = await pool_json(gateway)
        assert (pool["m0"]["failures"], pool["m1"]["failures"]) == (1, 0)
        await gateway.stop()

    run(scenario())


def test_a_5xx_is_retried_elsewhere_and_a_429_moves_on_without_blame() -> None:
    async def scenario() -> None:
        transport = per_backend(m0=Answer(status=503), m1=Answer(status=429))
        gateway = memory_gateway(transport, 3)
        await gateway.start()
        reply = await call(gateway, "POST", CHAT_PATH, CHAT)
        assert await reply.status() == 200
        assert [backend for backend, _ in transport.seen] == ["m0", "m1", "m2"]
        pool = await pool_json(gateway)
        assert (pool["m0"]["failures"], pool["m1"]["failures"]) == (1, 0)
        metrics = await (await call(gateway, "GET", "/metrics")).read()
        assert b"proxyfleet_failovers_total 2.0" in metrics
        await gateway.stop()

    run(scenario())


def test_when_every_try_fails_the_last_failure_is_the_answer() -> None:
    async def scenario() -> None:
        transport = MemoryTransport(Answer(fault="refuse"))
        gateway = memory_gateway(transport, 5, pool={"retries": 2})
        await gateway.start()
        reply = await call(gateway, "POST", CHAT_PATH, CHAT)
        assert await reply.status() == 502
        error = (await reply.json())["error"]
        assert error["code"] == "upstream_error"
        assert "m2" in error["message"]  # the third try's backend
        assert len(transport.seen) == 3  # retries: 2
        await gateway.stop()

    run(scenario())


def test_the_last_try_answers_with_the_upstreams_own_status() -> None:
    async def scenario() -> None:
        transport = MemoryTransport(Answer(status=503, chunks=(b'{"busy": 1}',)))
        gateway = memory_gateway(transport, 2, pool={"retries": 1})
        await gateway.start()
        reply = await call(gateway, "POST", CHAT_PATH, CHAT)
        assert await reply.status() == 503
        assert await reply.json() == {"busy": 1}
        await gateway.stop()

    run(scenario())


def test_nothing_is_retried_once_the_stream_started() -> None:
    async def scenario() -> None:
        events = [b'data: {"n": %d}\n\n' % n for n in range(5)]
        transport = MemoryTransport(Answer.sse(events, gap=0.1, fault="drop", drop_after=2))
        gateway = memory_gateway(transport, 3)
        await gateway.start()
        reply = await call(gateway, "POST", CHAT_PATH, {**CHAT, "stream": True})
        assert await reply.status() == 200
        body = await reply.read()
        assert body.startswith(events[0] + events[1])
        last = body.rsplit(b"\n\n", 2)[-2]
        assert last.startswith(b"event: error\ndata: ")
        error = json.loads(last.split(b"data: ", 1)[1])["error"]
        assert error["code"] == "upstream_stream_broken"
        assert len(transport.seen) == 1  # not retried
        assert (await pool_json(gateway))["m0"]["failures"] == 1
        await gateway.stop()

    run(scenario())


def test_a_request_is_never_retried_on_a_backend_it_already_tried() -> None:
    async def scenario() -> None:
        tried: list[str] = []

        def script(backend: BackendSpec, request: Request) -> Answer:
            tried.append(backend.id)
            return Answer(status=500)

        gateway = memory_gateway(MemoryTransport(script), 2, pool={"retries": 5})
        await gateway.start()
        reply = await call(gateway, "POST", CHAT_PATH, CHAT)
        assert await reply.status() == 502  # every try failed: the last failure says why
        assert "answered 500" in (await reply.json())["error"]["message"]
        assert sorted(tried) == ["m0", "m1"]  # each once, though 5 retries were allowed
        await gateway.stop()

    run(scenario())
