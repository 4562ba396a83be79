"""The lean upstream client against real loopback servers, including misbehaving ones."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from proxyfleet.errors import (
    StateError,
    UpstreamClosed,
    UpstreamError,
    UpstreamProtocolError,
    UpstreamTimeout,
)
from proxyfleet.mock.runner import running_mock
from proxyfleet.mock.server import MockSettings
from proxyfleet.transports._client import Origin, UpstreamClient

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def _raw_server(handler: Handler) -> tuple[asyncio.Server, Origin]:
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return server, Origin.parse(f"http://127.0.0.1:{port}/v1")


async def _read_request(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            await reader.readexactly(int(line.split(b":")[1]))
    return head


@pytest.fixture
async def client() -> AsyncIterator[UpstreamClient]:
    async with UpstreamClient(connect_timeout=2, read_timeout=2) as upstream:
        yield upstream


def test_origin_parsing() -> None:
    origin = Origin.parse("https://api.example.com/v1/")
    assert (origin.port, origin.base_path, origin.host_header) == (443, "/v1", b"api.example.com")
    assert Origin.parse("http://[::1]:8080").host_header == b"[::1]:8080"
    with pytest.raises(ValueError, match="not an http"):
        Origin.parse("ftp://x")


async def test_keep_alive_reuses_one_connection(client: UpstreamClient) -> None:
    async with running_mock("127.0.0.1", 0, MockSettings(chunks=2, chunk_size=4)) as mock:
        origin = Origin.parse(mock.base_url)
        for _ in range(5):
            response = await client.request(
                origin, "POST", "/chat/completions", {"content-type": "application/json"}, b"{}"
            )
            assert response.status == 200
            assert b'"content": "mock moc"' in await response.read()
            response.release()
        assert client.open_connections == 1
        stream = await client.request(origin, "POST", "/chat/completions", {}, b'{"stream": true}')
        assert stream.content_type == b"text/event-stream"
        assert stream.content_length is None
        body = b"".join([c async for c in stream.chunks()])
        assert body.endswith(b"data: [DONE]\n\n")
        stream.release()
        assert client.open_connections == 1


async def test_stale_keep_alive_is_retried_on_a_fresh_connection(client: UpstreamClient) -> None:
    async def once_then_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.close()
        await writer.wait_closed()  # closes the kept-alive connection behind the client's back

    server, origin = await _raw_server(once_then_close)
    async with server:
        for _ in range(3):
            response = await client.request(origin, "GET", "/x", {})
            assert await response.read() == b"ok"
            response.release()
            await asyncio.sleep(0.1)


async def test_connection_close_and_head(client: UpstreamClient) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await _read_request(reader)
        if head.startswith(b"HEAD"):
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n")
            await writer.drain()
            await reader.read()  # a HEAD answer's connection is not reused
            writer.close()
            return
        writer.write(b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\nuntil-close")
        writer.close()

    server, origin = await _raw_server(handler)
    async with server:
        head = await client.request(origin, "HEAD", "/x", {})
        assert head.content_length == 100
        assert await head.read() == b""
        head.release()
        response = await client.request(origin, "GET", "/x", {})
        assert await response.read() == b"until-close"
        response.release()
    assert client.open_connections == 0


async def test_broken_upstreams_raise_connection_errors(client: UpstreamClient) -> None:
    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.write(b"SMTP ready\r\n\r\n")
        await writer.drain()
        await reader.read()
        writer.close()

    async def cut(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nonly-part")
        await writer.drain()
        writer.transport.abort()

    server, origin = await _raw_server(garbage)
    async with server:
        with pytest.raises(UpstreamProtocolError):
            await client.request(origin, "GET", "/x", {})
    server, origin = await _raw_server(cut)
    async with server:
        response = await client.request(origin, "GET", "/x", {})
        with pytest.raises(UpstreamClosed):
            await response.read()
        response.close()
    with pytest.raises(UpstreamError, match="ConnectionRefusedError") as refused:
        await client.request(Origin.parse("http://127.0.0.1:1/v1"), "GET", "/x", {})
    assert isinstance(refused.value.__cause__.__cause__, ConnectionRefusedError)


async def test_silence_is_a_timeout() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        await reader.read()  # until the client gives up
        writer.close()

    server, origin = await _raw_server(silent)
    async with server, UpstreamClient(read_timeout=0.2) as client:
        with pytest.raises(UpstreamTimeout):
            await client.request(origin, "GET", "/x", {})
        await asyncio.sleep(0.01)  # the aborted transport reports its loss on the next turn
        assert client.open_connections == 0


async def test_large_body_flows_through_backpressure(client: UpstreamClient) -> None:
    size = 5 * 1024 * 1024

    async def big(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
        for _ in range(size // 65536):
            writer.write(b"10000\r\n" + b"x" * 65536 + b"\r\n")
            await writer.drain()
        writer.write(b"0\r\n\r\n")
        await writer.drain()
        writer.close()

    server, origin = await _raw_server(big)
    async with server:
        response = await client.request(origin, "GET", "/big", {})
        total = 0
        async for chunk in response.chunks():
            total += len(chunk)
            await asyncio.sleep(0)  # a slow reader
        assert total == size
        response.release()


async def test_closed_client_refuses() -> None:
    client = UpstreamClient()
    async with client:
        pass
    with pytest.raises(StateError):
        await client.request(Origin.parse("http://127.0.0.1:1"), "GET", "/", {})
