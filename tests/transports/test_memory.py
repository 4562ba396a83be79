"""The memory transport: scripted answers and faults, produced as a real upstream would (so
concurrency is counted as the "upstream" sees it), on virtual time."""

from __future__ import annotations

import asyncio

import pytest

from proxyfleet.errors import UpstreamClosed, UpstreamError, UpstreamRefused, UpstreamTimeout
from proxyfleet.pool import BackendSpec
from proxyfleet.transports import Answer, MemoryTransport, Request
from tests.virtual import run

B = BackendSpec("m0", "memory://m0", kind="memory")
GET = Request("GET", "/x")


def test_an_answer_arrives_chunk_by_chunk_with_its_gaps() -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        transport = MemoryTransport(Answer.sse([b"a", b"b", b"c"], gap=2.0, delay=1.0))
        exchange = await transport.handle(B, GET)
        assert loop.time() == pytest.approx(1.0)
        assert (exchange.status, exchange.content_type, exchange.content_length) == (
            200,
            b"text/event-stream",
            None,
        )
        got = []
        while (chunk := await exchange.next_chunk()) is not None:
            got.append((chunk, round(loop.time(), 3)))
        assert got == [(b"a", 1.0), (b"b", 3.0), (b"c", 5.0)]
        exchange.release()
        assert transport.inflight == {"m0": 0}

    run(scenario())


def test_a_framed_answer_has_its_length() -> None:
    async def scenario() -> None:
        exchange = await MemoryTransport(Answer(chunks=(b"12", b"345"))).handle(B, GET)
        assert exchange.content_length == 5
        assert (b"content-length", b"5") in exchange.headers
        assert await exchange.read() == b"12345"

    run(scenario())


def test_faults() -> None:
    async def scenario() -> None:
        with pytest.raises(UpstreamError, match="refused"):
            await MemoryTransport(Answer(fault="refuse")).handle(B, GET)
        with pytest.raises(UpstreamTimeout):
            await MemoryTransport(Answer(fault="hang"), read_timeout=30).handle(B, GET)
        dropping = MemoryTransport(Answer(chunks=(b"1", b"2", b"3"), fault="drop", drop_after=2))
        exchange = await dropping.handle(B, GET)
        with pytest.raises(UpstreamClosed):
            await exchange.read()
        silent = MemoryTransport(Answer.sse([b"1", b"2"], gap=100.0), read_timeout=10.0)
        exchange = await silent.handle(B, GET)
        assert await exchange.next_chunk() == b"1"
        with pytest.raises(UpstreamTimeout, match="silent for 10s"):
            await exchange.next_chunk()
        exchange.close()
        await silent.aclose()

    run(scenario())


def test_a_closed_exchange_stays_in_flight_until_the_upstream_notices() -> None:
    """Like a real server, the upstream finds out nobody reads only when it next writes."""

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        transport = MemoryTransport(Answer.sse([b"1", b"2", b"3"], gap=5.0))
        exchange = await transport.handle(B, GET)
        assert await exchange.next_chunk() == b"1"
        exchange.close()
        closed = loop.time()
        assert transport.inflight == {"m0": 1}
        await asyncio.sleep(4.9)
        assert transport.inflight == {"m0": 1}
        await asyncio.sleep(0.2)
        assert transport.inflight == {"m0": 0}
        assert loop.time() - closed == pytest.approx(5.1)

    run(scenario())


def test_peak_counts_overlapping_requests_per_backend() -> None:
    async def scenario() -> None:
        transport = MemoryTransport(Answer(delay=1.0))
        other = BackendSpec("m1", "memory://m1", kind="memory")
        exchanges = await asyncio.gather(
            transport.handle(B, GET), transport.handle(B, GET), transport.handle(other, GET)
        )
        for exchange in exchanges:
            await exchange.read()
        assert transport.peak == {"m0": 2, "m1": 1}
        assert transport.requests == {"m0": 2, "m1": 1}
        assert [b for b, _ in transport.seen] == ["m0", "m0", "m1"]

    run(scenario())


def test_a_script_answers_per_backend_and_request() -> None:
    async def scenario() -> None:
        def script(backend: BackendSpec, request: Request) -> Answer:
            return Answer(status=404 if request.target == "/missing" else 200)

        transport = MemoryTransport(script)
        assert (await transport.handle(B, Request("GET", "/missing"))).status == 404
        assert (await transport.handle(B, GET)).status == 200

    run(scenario())


def test_a_channel_echoes_until_closed() -> None:
    async def scenario() -> None:
        transport = MemoryTransport()
        channel = await transport.connect(B, GET, ["proto-1"])
        assert channel.subprotocol == "proto-1"
        await channel.send("hello")
        await channel.send(b"\x00\x01")
        assert [await channel.receive(), await channel.receive()] == ["hello", b"\x00\x01"]
        await channel.close(4000)
        assert (await channel.receive(), channel.close_code) == (None, 4000)
        with pytest.raises(UpstreamClosed):
            await channel.send("late")
        with pytest.raises(UpstreamRefused) as refused:
            await MemoryTransport(Answer(status=403)).connect(B, GET)
        assert refused.value.upstream_status == 403

    run(scenario())
