"""The http transport against the real mock upstream: credentials applied per request (keys,
headers, a storage state's cookies, refreshed when one expires), errors that name the backend,
WebSockets, and forgetting a backend that left."""

from __future__ import annotations

import asyncio
import time

import pytest

from proxyfleet.errors import UpstreamError, UpstreamRefused, UpstreamTimeout
from proxyfleet.mock.runner import running_mock
from proxyfleet.mock.server import MockSettings, credential_label
from proxyfleet.pool import BackendSpec, Cookie
from proxyfleet.transports import HttpTransport, Request

CHAT = b'{"model": "m", "messages": [{"role": "user", "content": "hi"}]}'


async def test_a_backends_key_replaces_the_clients_authorization() -> None:
    async with (
        running_mock("127.0.0.1", 0, MockSettings()) as mock,
        HttpTransport(connect_timeout=2, read_timeout=5) as http,
    ):
        backend = BackendSpec("k", mock.base_url, (("Authorization", "Bearer sk-backend"),))
        request = Request(
            "POST",
            "/chat/completions",
            {"authorization": "Bearer the-client", "content-type": "application/json"},
            CHAT,
        )
        exchange = await http.handle(backend, request)
        assert exchange.status == 200
        await exchange.read()
        exchange.release()
        (seen,) = mock.app_stats()["recent"]
        assert seen["credential"] == credential_label("Bearer sk-backend")
        assert http.open_connections == 1  # kept alive for the next request


async def test_a_storage_states_cookies_go_as_one_cookie_header_until_one_expires() -> None:
    async with (
        running_mock("127.0.0.1", 0, MockSettings()) as mock,
        HttpTransport(connect_timeout=2, read_timeout=5) as http,
    ):
        soon = time.time() + 1.0
        cookies = (
            Cookie("sid", "s-1", "127.0.0.1"),
            Cookie("short", "s-2", "127.0.0.1", expires=soon),
            Cookie("elsewhere", "x", "example.org"),
            Cookie("secure-only", "x", "127.0.0.1", secure=True),
        )
        backend = BackendSpec("c", mock.base_url, (), 1, "test", cookies=cookies)

        async def cookie_seen() -> str:
            exchange = await http.handle(backend, Request("GET", "/anything"))
            await exchange.read()
            exchange.release()
            return str(mock.app_stats()["recent"][-1]["credential"])

        assert await cookie_seen() == credential_label("sid=s-1; short=s-2")
        await asyncio.sleep(soon - time.time() + 0.05)
        assert await cookie_seen() == credential_label("sid=s-1")


async def test_errors_name_the_backend_and_keep_their_kind() -> None:
    async with HttpTransport(connect_timeout=1, read_timeout=1) as http:
        dead = BackendSpec("gone", "http://user:pw@127.0.0.1:1/v1")
        with pytest.raises(UpstreamError) as info:
            await http.handle(dead, Request("GET", "/models"))
        message = info.value.message
        assert message.startswith("backend gone at http://127.0.0.1:1/v1 failed:")
        assert "pw" not in message

    gave_up = asyncio.Event()

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # reads the request, never answers, until the client gives up
        writer.close()
        await writer.wait_closed()
        gave_up.set()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server, HttpTransport(connect_timeout=1, read_timeout=0.3) as http:
        slow = BackendSpec("slow", f"http://127.0.0.1:{port}/v1")
        with pytest.raises(UpstreamTimeout, match=r"backend slow at .* timed out"):
            await http.handle(slow, Request("POST", "/chat/completions", {}, CHAT))
        await asyncio.wait_for(gave_up.wait(), 5)


async def test_a_websocket_channel_relays_both_ways() -> None:
    async with (
        running_mock("127.0.0.1", 0, MockSettings(chunks=2, chunk_size=4)) as mock,
        HttpTransport(connect_timeout=2, read_timeout=5) as http,
    ):
        backend = BackendSpec("ws", mock.base_url, (("Authorization", "Bearer sk-ws"),))
        channel = await http.connect(backend, Request("GET", "/responses"))
        await channel.send('{"type": "response.create", "model": "m", "input": "hi"}')
        kinds = []
        while (message := await channel.receive()) is not None:
            kinds.append(str(message))
            if '"response.completed"' in kinds[-1]:
                break
        assert '"response.created"' in kinds[0]
        await channel.close()
        assert await channel.receive() is None
        with pytest.raises(UpstreamRefused) as refused:  # the mock echoes this path with a 200
            await http.connect(backend, Request("GET", "/no/such/socket"))
        assert refused.value.upstream_status == 200


async def test_forgetting_a_backend_closes_its_idle_connections() -> None:
    async with (
        running_mock("127.0.0.1", 0, MockSettings()) as mock,
        HttpTransport(connect_timeout=2, read_timeout=5) as http,
    ):
        backend = BackendSpec("f", mock.base_url)
        exchange = await http.handle(backend, Request("GET", "/models"))
        await exchange.read()
        exchange.release()
        assert http.open_connections == 1
        http.forget(backend)
        for _ in range(20):
            if http.open_connections == 0:
                break
            await asyncio.sleep(0.01)
        assert http.open_connections == 0
