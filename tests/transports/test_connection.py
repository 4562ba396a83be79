"""One upstream HTTP/1.1 connection (the httptools protocol) against raw loopback servers: an
upgrade answer ends it, and a paused reader's silence is not the upstream's."""

from __future__ import annotations

import asyncio

from proxyfleet.transports._client import Origin, UpstreamClient


class _Server:
    """Answers every request with ``body``, then waits ``then_wait`` and hangs up."""

    def __init__(self, body: bytes, then_wait: float = 0.0) -> None:
        self._body = body
        self._wait = then_wait
        self.done = asyncio.Event()
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> Origin:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        return Origin.parse(f"http://127.0.0.1:{port}")

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        await asyncio.wait_for(self.done.wait(), 10)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(self._body)
            await writer.drain()
            await asyncio.sleep(self._wait)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()
            self.done.set()


async def test_an_upgrade_answer_ends_the_connection() -> None:
    """The gateway never asks for an upgrade (Upgrade is hop-by-hop): an upstream that answers
    101 anyway gets no more of this connection; what follows the head is not read."""
    answer = b"HTTP/1.1 101 Switching Protocols\r\nupgrade: h2c\r\nconnection: upgrade\r\n\r\nxx"
    async with _Server(answer) as origin, UpstreamClient(read_timeout=2) as client:
        response = await client.request(origin, "GET", "/", {})
        assert response.status == 101
        assert await response.read() == b""
        response.release()
        await asyncio.sleep(0.01)
        assert client.open_connections == 0


async def test_a_slow_reader_pauses_the_upstream_without_a_timeout() -> None:
    size = 2 * 1024 * 1024  # well above the connection's high-water mark
    head = b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % size
    async with (
        _Server(head + b"y" * size, then_wait=1.0) as origin,
        UpstreamClient(read_timeout=0.3) as client,
    ):
        response = await client.request(origin, "GET", "/", {})
        first = await response.next_chunk()
        assert first
        await asyncio.sleep(0.6)  # reading is paused: twice the read timeout, no error
        rest = await response.read()
        assert len(first) + len(rest) == size
        response.release()
