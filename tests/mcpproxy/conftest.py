"""Fixtures of the MCP proxy tests, all on 127.0.0.1: the real mcp SDK server over streamable
HTTP, an ASGI app served by uvicorn in the test's own loop, a scripted HTTP upstream
(aiohttp.web) that records what it was sent, and an aiohttp client."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import aiohttp
import pytest
import uvicorn
from aiohttp import web

from tests.conftest import Processes
from tests.mcpproxy.support import Scripted, Seen, http_server

App = Callable[[Any, Any, Any], Awaitable[None]]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@pytest.fixture(scope="module")
def sdk_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The test server (tests/mcpproxy/server_app.py) on streamable HTTP, one per module."""
    processes = Processes(tmp_path_factory.mktemp("sdk-server"))
    try:
        yield http_server(processes)
    finally:
        processes.close()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


class _Server(uvicorn.Server):
    """uvicorn without its signal handlers: the test runner keeps its own."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


@pytest.fixture
async def serve_asgi() -> AsyncIterator[Callable[[App], Awaitable[str]]]:
    """``base = await serve_asgi(app)``: the app on uvicorn at ``http://127.0.0.1:PORT``,
    stopped at the end of the test."""
    running: list[tuple[_Server, asyncio.Task[None], socket.socket]] = []

    async def serve(app: App) -> str:
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        config = uvicorn.Config(
            app,
            loop="none",
            lifespan="off",
            ws="none",
            log_config=None,
            access_log=False,
            timeout_graceful_shutdown=1,
        )
        server = _Server(config)
        task = asyncio.ensure_future(server.serve(sockets=[sock]))
        running.append((server, task, sock))
        for _ in range(500):  # five seconds at most
            if server.started or task.done():
                break
            await asyncio.sleep(0.01)
        assert server.started, "uvicorn did not start"
        return f"http://127.0.0.1:{sock.getsockname()[1]}"

    yield serve
    for server, task, sock in running:
        server.should_exit = True
        await task
        sock.close()


@pytest.fixture
async def scripted() -> AsyncIterator[Callable[[Handler], Awaitable[Scripted]]]:
    """``upstream = await scripted(handler)``: aiohttp.web at ``upstream.url`` (path /mcp)."""
    runners: list[web.AppRunner] = []

    async def start(handler: Handler) -> Scripted:
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        server = Scripted(f"http://127.0.0.1:{sock.getsockname()[1]}/mcp")

        async def record(request: web.Request) -> web.StreamResponse:
            peer = request.transport.get_extra_info("peername") if request.transport else None
            server.seen.append(
                Seen(request.method, dict(request.headers), await request.read(), peer[1])
            )
            return await handler(request)

        app = web.Application()
        app.router.add_route("*", "/mcp", record)
        runner = web.AppRunner(app, access_log=None, handler_cancellation=True, shutdown_timeout=1)
        await runner.setup()
        runners.append(runner)
        await web.SockSite(runner, sock).start()
        return server

    yield start
    for runner in runners:
        await runner.cleanup()
