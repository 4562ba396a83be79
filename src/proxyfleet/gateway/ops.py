"""The operations endpoints: ``/live``, ``/ready``, ``/health``, ``/metrics``, ``/admin/*``.

``/admin/*`` answers loopback clients only (unless ``server.admin_allow_remote``) and asks for
a client key when client auth is on. Each endpoint reads only the collaborators it is given.
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from typing import Any

from proxyfleet import __version__
from proxyfleet._asgi import Scope, Send, send_error, send_json
from proxyfleet.config.model import Config
from proxyfleet.errors import BadRequest, GatewayError, NotFound
from proxyfleet.gateway.admission import Admission
from proxyfleet.gateway.auth import ClientAuth
from proxyfleet.gateway.metrics import CONTENT_TYPE, GatewayMetrics
from proxyfleet.mcpproxy.mount import McpMount
from proxyfleet.orchestrator import Elastic
from proxyfleet.pool import BackendState, Pool

__all__ = ["Operations", "Readiness"]

#: Whether the gateway can serve, and why (or why not).
Readiness = Callable[[], Awaitable[tuple[bool, str]]]


def _is_loopback(scope: Scope) -> bool:
    client = scope.get("client")
    if not client:
        return True  # a unix socket or an in-process call
    try:
        return ipaddress.ip_address(client[0]).is_loopback
    except ValueError:
        return False


class Operations:
    def __init__(
        self,
        config: Config,
        pool: Pool,
        metrics: GatewayMetrics,
        readiness: Readiness,
        *,
        auth: ClientAuth,
        admission: Admission,
        mcp: McpMount,
        elastic: Elastic | None = None,
        started_at: float = 0.0,
    ) -> None:
        self.config = config
        self.pool = pool
        self.metrics = metrics
        self.readiness = readiness
        self.auth = auth
        self.admission = admission
        self.mcp = mcp
        self.elastic = elastic
        self.started_at = started_at
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
                if not _is_loopback(scope) and not self.config.server.admin_allow_remote:
                    raise NotFound(f"no route for {path}")
                self.auth.authorize(scope)
            await handler(scope, send)
        except GatewayError as error:
            await send_error(send, error)

    async def _readiness(self) -> tuple[bool, str]:
        """The gateway's own readiness, and its MCP routes': a route whose server cannot
        start makes it unavailable, named with why."""
        ok, reason = await self.readiness()
        failing = self.mcp.failing() if self.mcp else []
        if ok and failing:
            return False, "; ".join(failing)
        return ok, reason

    async def _live(self, scope: Scope, send: Send) -> None:
        await send_json(send, 200, {"status": "alive"})

    async def _ready(self, scope: Scope, send: Send) -> None:
        ok, reason = await self._readiness()
        why = None if ok or self.elastic is None else self.elastic.why_not()
        if why is not None:  # an elastic pool that cannot grow says why (a refused key…)
            reason = f"{reason}: {why}"
        body: dict[str, object] = {"status": "ready" if ok else "unavailable", "reason": reason}
        if self.mcp:
            body["mcp"] = self.mcp.health()
        await send_json(send, 200 if ok else 503, body)

    async def _health(self, scope: Scope, send: Send) -> None:
        ok, reason = await self._readiness()
        states: dict[str, int] = {}
        for status in await self.pool.snapshot():
            states[status.state] = states.get(status.state, 0) + 1
        healthy = states.get(BackendState.IDLE, 0) + states.get(BackendState.BUSY, 0)
        whole = healthy == self.pool.size
        overall = "ok" if ok and whole else ("degraded" if ok else "unavailable")
        await send_json(
            send,
            200 if ok else 503,
            {
                "status": overall,
                "reason": reason,
                "version": __version__,
                "uptime_seconds": round(time.time() - self.started_at, 1),
                "backends": states,
                "waiting": self.pool.waiting,
                "in_flight": self.admission.active,
                "mcp": self.mcp.health(),
            },
        )

    async def _metrics(self, scope: Scope, send: Send) -> None:
        body = self.metrics.render(await self.pool.snapshot(), self.pool.waiting)
        headers = [(b"content-type", CONTENT_TYPE), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def _admin_pool(self, scope: Scope, send: Send) -> None:
        pool = self.pool
        backends: list[dict[str, Any]] = []
        for status in await pool.snapshot():
            spec = pool.spec(status.id)
            backends.append(dict(asdict(status), source=spec.source, kind=spec.kind))
        await send_json(
            send,
            200,
            {
                "selection": self.config.pool.selection,
                "waiting": pool.waiting,
                "queue_limit": self.config.pool.queue_limit,
                "backends": backends,
                "store": {
                    "kind": self.config.pool.store.kind,
                    "processes": await pool.processes(),
                },
                "elastic": None if self.elastic is None else self.elastic.describe(),
            },
        )

    async def _admin_sessions(self, scope: Scope, send: Send) -> None:
        """Every MCP session: id, client, upstream pid, age, last activity, messages each way;
        ended ones (the most recent) with why they ended."""
        await send_json(send, 200, {"routes": self.mcp.describe()})

    async def _admin_queue(self, scope: Scope, send: Send) -> None:
        config = self.config.pool
        await send_json(
            send,
            200,
            {
                "waiting": self.pool.waiting,
                "queue_limit": config.queue_limit,
                "lease_timeout": config.lease_timeout,
                "waiters": self.pool.queue(),
            },
        )
