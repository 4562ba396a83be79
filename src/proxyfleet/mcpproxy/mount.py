"""The MCP routes mounted on the gateway's port: ``async with McpMount(routes, limit) as mcp:``.

It owns the routes' lifecycle (children prestarted at start, every session ended at stop) and
the keep-alive client shared by routes with an HTTP upstream; the gateway only asks it whether
a path is its own and hands such requests over.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import aiohttp

from proxyfleet._asgi import Receive, Scope, Send
from proxyfleet.config.model import McpRouteConfig
from proxyfleet.mcpproxy.http import McpHttp
from proxyfleet.mcpproxy.registry import Route

__all__ = ["McpMount"]


class McpMount:
    def __init__(self, routes: Sequence[McpRouteConfig], body_limit: int) -> None:
        self.endpoints = [McpHttp(Route(route), body_limit) for route in routes]
        self._by_path = {path: e for e in self.endpoints for path in e.paths}
        self._http: aiohttp.ClientSession | None = None
        self._stopping: asyncio.Task[None] | None = None

    def __bool__(self) -> bool:
        return bool(self.endpoints)

    def owns(self, path: str) -> bool:
        return path in self._by_path

    async def __aenter__(self) -> McpMount:
        if any(e.route.config.upstream.url is not None for e in self.endpoints):
            self._http = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0, limit_per_host=0, keepalive_timeout=60),
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=10),
                auto_decompress=False,
                cookie_jar=aiohttp.DummyCookieJar(),
            )
        for endpoint in self.endpoints:
            await endpoint.route.start(self._http)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
        if self._http is not None:
            await self._http.close()

    def begin_stop(self) -> None:
        """Shutdown begins: end every session now (they are long-lived; waiting for them would
        take the whole drain grace). Their clients get a JSON-RPC error, children stop."""
        if self.endpoints and self._stopping is None:
            self._stopping = asyncio.ensure_future(self._stop_routes())

    async def stop(self) -> None:
        self.begin_stop()
        if self._stopping is not None:
            await self._stopping

    async def _stop_routes(self) -> None:
        await asyncio.gather(*(e.route.stop() for e in self.endpoints))

    async def dispatch(
        self, scope: Scope, receive: Receive, send: Send, path: str, client: str
    ) -> None:
        await self._by_path[path].dispatch(scope, receive, send, path, client)

    def health(self) -> list[dict[str, Any]]:
        return [e.route.health() for e in self.endpoints]

    def failing(self) -> list[str]:
        """Why each route whose server cannot start is failing (for ``/ready``)."""
        return [
            f"MCP route {e.route.path} is failing: {e.route.supply.start_health.reason}"
            for e in self.endpoints
            if e.route.supply.start_health.failing
        ]

    def describe(self) -> list[dict[str, Any]]:
        return [e.route.describe() for e in self.endpoints]
