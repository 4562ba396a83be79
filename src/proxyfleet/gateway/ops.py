"""The operations endpoints: ``/live``, ``/ready``, ``/health``, ``/metrics``, ``/admin/*``.

``/admin/*`` answers loopback clients only (unless ``server.admin_allow_remote``) and asks for
a client key when client auth is on.
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from typing import TYPE_CHECKING

from proxyfleet import __version__
from proxyfleet.errors import BadRequest, GatewayError, NotFound
from proxyfleet.gateway.asgi import Scope, Send, send_error, send_json
from proxyfleet.gateway.metrics import CONTENT_TYPE

if TYPE_CHECKING:
    from proxyfleet.gateway.app import Gateway

__all__ = ["Operations"]


def _is_loopback(scope: Scope) -> bool:
    client = scope.get("client")
    if not client:
        return True  # a unix socket or an in-process call
    try:
        return ipaddress.ip_address(client[0]).is_loopback
    except ValueError:
        return False


class Operations:
    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self._routes: dict[str, Callable[[Scope, Send], Awaitable[None]]] = {
            "/live": self._live,
            "/ready": self._ready,
            "/health": self._health,
            "/metrics": self._metrics,
            "/admin/pool": self._admin_pool,
            "/admin/queue": self._admin_queue,
            "/admin/sessions": self._admin_sessions,
        }

    async def handle(self, scope: Scope, send: Send, path: str) -> None:
        handler = self._routes.get(path)
        try:
            if handler is None:
                raise NotFound(f"no route for {path}; the OpenAI API is under /v1")
            if scope["method"] not in ("GET", "HEAD"):
                raise BadRequest(f"{path} only answers GET", code="method_not_allowed")
            if path.startswith("/admin/"):
                if not _is_loopback(scope) and not self.gateway.config.server.admin_allow_remote:
                    raise NotFound(f"no route for {path}")
                self.gateway.authorize(scope)
            await handler(scope, send)
        except GatewayError as error:
            await send_error(send, error)

    async def _live(self, scope: Scope, send: Send) -> None:
        await send_json(send, 200, {"status": "alive"})

    async def _ready(self, scope: Scope, send: Send) -> None:
        ok, reason = self.gateway.readiness()
        body: dict[str, object] = {"status": "ready" if ok else "unavailable", "reason": reason}
        if self.gateway.mcp:
            body["mcp"] = [e.route.health() for e in self.gateway.mcp.values()]
        await send_json(send, 200 if ok else 503, body)

    async def _health(self, scope: Scope, send: Send) -> None:
        gateway = self.gateway
        pool = gateway.pool
        ok, reason = gateway.readiness()
        states: dict[str, int] = {}
        for status in pool.snapshot():
            states[status.state] = states.get(status.state, 0) + 1
        healthy = states.get("idle", 0) + states.get("busy", 0)
        overall = (
            "ok" if ok and healthy == len(pool.backends) else ("degraded" if ok else "unavailable")
        )
        await send_json(
            send,
            200 if ok else 503,
            {
                "status": overall,
                "reason": reason,
                "version": __version__,
                "uptime_seconds": round(time.time() - gateway.started_at, 1),
                "backends": states,
                "waiting": pool.waiting,
                "in_flight": gateway.in_flight,
                "mcp": [e.route.health() for e in gateway.mcp.values()],
            },
        )

    async def _metrics(self, scope: Scope, send: Send) -> None:
        body = self.gateway.metrics.render()
        headers = [(b"content-type", CONTENT_TYPE), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def _admin_pool(self, scope: Scope, send: Send) -> None:
        gateway = self.gateway
        pool, config = gateway.pool, gateway.config
        specs = {b.id: b for b in pool.backends}
        backends = [dict(asdict(s), source=specs[s.id].source) for s in pool.snapshot()]
        await send_json(
            send,
            200,
            {
                "selection": config.pool.selection,
                "waiting": pool.waiting,
                "queue_limit": config.pool.queue_limit,
                "backends": backends,
                "elastic": None if gateway.elastic is None else gateway.elastic.describe(),
            },
        )

    async def _admin_sessions(self, scope: Scope, send: Send) -> None:
        """Every MCP session: id, client, upstream pid, age, last activity, messages each way;
        ended ones (the most recent) with why they ended."""
        routes = [e.route.describe() for e in self.gateway.mcp.values()]
        await send_json(send, 200, {"routes": routes})

    async def _admin_queue(self, scope: Scope, send: Send) -> None:
        pool, config = self.gateway.pool, self.gateway.config
        await send_json(
            send,
            200,
            {
                "waiting": pool.waiting,
                "queue_limit": config.pool.queue_limit,
                "lease_timeout": config.pool.lease_timeout,
                "waiters": pool.queue(),
            },
        )
