"""Run the mock as a server: bound, announced, stopped cleanly on SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from aiohttp import web

from proxyfleet.debuglog.writer import DebugLog
from proxyfleet.mock.server import MOCK_STATE, MockSettings, build_mock_app

__all__ = ["MockServer", "running_mock", "serve_mock"]


class MockServer:
    """The mock on ``host:port`` (port 0 picks a free one: read :attr:`port` after start)."""

    def __init__(
        self, host: str, port: int, settings: MockSettings, debug_dir: Path | None = None
    ) -> None:
        self.host = host
        self.requested_port = port
        self.debug = DebugLog(debug_dir) if debug_dir is not None else None
        self.app = build_mock_app(settings, self.debug)
        # a mock stops within a second or two, whatever its requests are doing (--hang too)
        self._runner = web.AppRunner(
            self.app, access_log=None, handle_signals=False, shutdown_timeout=1.0
        )
        self.port = port

    def app_stats(self) -> dict[str, Any]:
        """The counters ``GET /mock/stats`` would return."""
        return self.app[MOCK_STATE].stats.as_json()

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    async def start(self) -> None:
        self.port = await start_site(self._runner, self.host, self.requested_port)
        if self.debug is not None:
            self.debug.start(
                component="mock", name=self.app[MOCK_STATE].settings.name, port=self.port
            )

    async def stop(self) -> None:
        await self._runner.cleanup()
        if self.debug is not None:
            self.debug.stop()


async def start_site(runner: web.AppRunner, host: str, port: int) -> int:
    """Serve ``runner`` on ``host:port`` (0 = a free port); the port it got."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.create_server((host, port), family=family, backlog=2048)
    await runner.setup()
    await web.SockSite(runner, sock).start()
    return int(sock.getsockname()[1])


def stop_event() -> asyncio.Event:
    """Set on SIGTERM or SIGINT: a served mock stops cleanly on either."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    return stop


@asynccontextmanager
async def running_mock(
    host: str, port: int, settings: MockSettings, debug_dir: Path | None = None
) -> AsyncIterator[MockServer]:
    server = MockServer(host, port, settings, debug_dir)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


def die_with_parent() -> None:
    """When started by the mock orchestrator (``PROXYFLEET_DIE_WITH_PARENT`` holds its pid):
    get SIGTERM when it dies, even by SIGKILL, so no engine outlives it (Linux only)."""
    parent = os.environ.get("PROXYFLEET_DIE_WITH_PARENT")
    if not parent:
        return
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    if str(os.getppid()) != parent:  # it died before we could ask
        os.kill(os.getpid(), signal.SIGTERM)


async def serve_mock(
    host: str, port: int, settings: MockSettings, debug_dir: Path | None = None
) -> None:
    """Serve until SIGTERM or SIGINT; the first line printed is the base URL."""
    stop = stop_event()
    die_with_parent()
    async with running_mock(host, port, settings, debug_dir) as server:
        print(f"mock listening on {server.base_url}", flush=True)
        print(
            f"  stats: http://{host}:{server.port}/mock/stats   faults: POST /mock/faults",
            file=sys.stderr,
            flush=True,
        )
        await stop.wait()
