"""Forwarding, in-process: what the backend is handed, how its answer reaches the client
(whole or chunk by chunk), and what happens when an answer breaks."""

from __future__ import annotations

from pathlib import Path

from proxyfleet.pool import BackendSpec
from proxyfleet.transports import Answer, MemoryTransport, Request
from tests.asgi import CHAT, call, memory_gateway
from tests.virtual import run


def test_the_backend_gets_the_request_minus_hop_by_hop_headers() -> None:
    async def scenario() -> None:
        transport = MemoryTransport()
        gateway = memory_gateway(transport, 1)
        await gateway.start()
        headers = [
            ("Connection", "keep-alive, X-Hop"),
            ("X-Hop", "1"),
            ("TE", "trailers"),
            ("Authorization", "Bearer the-clients-own"),
            ("X-Request-ID", "req-7"),
            ("X-Kept", "yes"),
        ]
        reply = await call(gateway, "POST", "/v1/files/a%20b?x=1", b"raw bytes", headers)
        assert await reply.status() == 200
        ((_, request),) = transport.seen
        assert (request.method, request.target, request.body) == (
            "POST",
            "/files/a%20b?x=1",
            b"raw bytes",
        )
        assert request.headers["x-kept"] == "yes"
        assert request.headers["x-request-id"] == "req-7"
        assert request.headers["authorization"] == "Bearer the-clients-own"  # client auth is off
        assert not {"connection", "x-hop", "te", "host", "content-length"} & set(request.headers)
        await gateway.stop()

    run(scenario())


def test_with_client_auth_the_clients_key_never_goes_upstream(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.write_text("gw-key\n")

    async def scenario() -> None:
        transport = MemoryTransport()
        gateway = memory_gateway(transport, 1, server={"auth_keys_file": str(keys)})
        await gateway.start()
        reply = await call(
            gateway, "POST", "/v1/chat/completions", CHAT, [("Authorization", "Bearer gw-key")]
        )
        assert await reply.status() == 200
        ((_, request),) = transport.seen
        assert "authorization" not in request.headers
        await gateway.stop()

    run(scenario())


def test_a_framed_answer_goes_out_whole_with_its_own_length_and_our_request_id() -> None:
    async def scenario() -> None:
        answer = Answer(
            status=201,
            headers=(
                (b"Content-Type", b"application/json"),
                (b"Connection", b"keep-alive, X-Private"),
                (b"X-Private", b"1"),
                (b"X-Upstream", b"kept"),
                (b"X-Request-ID", b"theirs"),
            ),
            chunks=(b'{"a":', b" 1}"),
            gap=0.5,
        )
        gateway = memory_gateway(MemoryTransport(answer), 1)
        await gateway.start()
        reply = await call(gateway, "POST", "/v1/chat/completions", CHAT, [("X-Request-ID", "r1")])
        assert await reply.status() == 201
        assert await reply.read() == b'{"a": 1}'
        assert len(reply.chunks) == 1  # read whole, sent in one piece
        assert reply.headers["content-length"] == "8"
        assert reply.headers["x-upstream"] == "kept"
        assert reply.headers["x-request-id"] == "r1"
        assert "x-private" not in reply.headers
        assert "connection" not in reply.headers
        await gateway.stop()

    run(scenario())


def test_a_stream_goes_out_chunk_by_chunk_as_it_comes() -> None:
    async def scenario() -> None:
        events = [b"data: %d\n\n" % n for n in range(4)]
        gateway = memory_gateway(MemoryTransport(Answer.sse(events, gap=1.0)), 1)
        await gateway.start()
        reply = await call(gateway, "POST", "/v1/chat/completions", {**CHAT, "stream": True})
        assert await reply.status() == 200
        assert reply.headers["content-type"] == "text/event-stream"
        assert "content-length" not in reply.headers
        got = [await reply.chunk() for _ in range(4)]
        assert got == events
        assert await reply.chunk() == b""  # the end
        await gateway.stop()

    run(scenario())


def test_a_framed_answer_that_breaks_while_read_is_retried_elsewhere() -> None:
    async def scenario() -> None:
        broken = Answer(chunks=(b"{", b"}"), gap=0.1, fault="drop", drop_after=1)

        def script(backend: BackendSpec, request: Request) -> Answer:
            return broken if backend.id == "m0" else Answer()

        transport = MemoryTransport(script)
        gateway = memory_gateway(transport, 2)
        await gateway.start()
        reply = await call(gateway, "POST", "/v1/chat/completions", CHAT)
        assert await reply.status() == 200
        assert [b for b, _ in transport.seen] == ["m0", "m1"]
        last_try = memory_gateway(MemoryTransport(broken), 1, pool={"retries": 0})
        await last_try.start()
        reply = await call(last_try, "POST", "/v1/chat/completions", CHAT)
        assert await reply.status() == 502
        assert "broke off" in (await reply.json())["error"]["message"]
        await last_try.stop()
        await gateway.stop()

    run(scenario())


def test_a_plain_body_that_breaks_mid_way_is_left_incomplete() -> None:
    async def scenario() -> None:
        answer = Answer(
            headers=(
                (b"content-type", b"application/octet-stream"),
                (b"transfer-encoding", b"chunked"),
            ),
            chunks=(b"part-1", b"part-2", b"part-3"),
            gap=0.1,
            fault="drop",
            drop_after=2,
        )
        # a chunked answer has no length: the memory transport streams it when told so
        transport = MemoryTransport(answer)
        gateway = memory_gateway(transport, 1)
        await gateway.start()
        reply = await call(gateway, "GET", "/v1/files/big")
        assert await reply.status() == 200
        assert await reply.chunk() == b"part-1"
        assert await reply.chunk() == b"part-2"
        await reply.task  # the gateway ended the request without a last body message
        assert not reply.complete
        pool = await (await call(gateway, "GET", "/admin/pool")).json()
        assert pool["backends"][0]["failures"] == 1
        await gateway.stop()

    run(scenario())
