"""The gateway: a raw ASGI application that owns the pool, the upstream client and the metrics.

Routes: ``/v1/*`` is proxied through the pool (``/v1/chat/completions`` and ``/v1/responses``
must be JSON objects; ``/v1/models`` comes from the config or a cached upstream answer);
``/live``, ``/ready``, ``/health``, ``/metrics`` and ``/admin/{pool,queue}`` describe it.
WebSocket upgrades under ``/v1`` are passed through (see :mod:`.websocket`).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import hashlib
import json
import logging
import sys
import time
from collections.abc import Sequence
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import aiohttp

from proxyfleet.config.model import Config
from proxyfleet.debuglog.recorder import DebugRecorder
from proxyfleet.errors import (
    BadRequest,
    ClientGone,
    ConfigError,
    GatewayError,
    NoHealthyBackend,
    NotFound,
    Overloaded,
    PoolClosed,
    StateError,
    Unauthorized,
)
from proxyfleet.gateway.asgi import (
    Receive,
    Scope,
    Send,
    read_body,
    send_error,
    send_json,
    sse_error,
)
from proxyfleet.gateway.metrics import GatewayMetrics
from proxyfleet.gateway.ops import Operations
from proxyfleet.gateway.proxy import Forwarder, Sent, StreamBroken, Transform
from proxyfleet.gateway.rules import client_credential, request_id, upstream_path
from proxyfleet.gateway.translate import ChatToResponses
from proxyfleet.gateway.translate_ws import ChatWebSocket
from proxyfleet.gateway.websocket import WebSocketRelay, reject
from proxyfleet.logs import event
from proxyfleet.mcpproxy.http import McpHttp, send_mcp_error
from proxyfleet.mcpproxy.registry import Route
from proxyfleet.orchestrator import Elastic, StreamEvents, build_provisioner
from proxyfleet.pool import BackendSpec, Pool, PoolSettings
from proxyfleet.pool.prober import Prober
from proxyfleet.providers.profiles import PROFILES
from proxyfleet.providers.request import TranslateOptions, dumps, responses_to_chat
from proxyfleet.providers.response import ResponseShape
from proxyfleet.upstream import Origin, UpstreamClient

__all__ = ["Gateway", "GatewayState"]

_log = logging.getLogger("proxyfleet.gateway")
_ROUTES = {
    "/v1/chat/completions": "chat_completions",
    "/v1/responses": "responses",
    "/v1/models": "models",
}
_JSON_ROUTES = frozenset({"chat_completions", "responses"})


class GatewayState(enum.Enum):
    NEW = "new"
    SERVING = "serving"
    DRAINING = "draining"
    STOPPED = "stopped"


def load_keys(path: Path) -> frozenset[str]:
    """Client keys, one per line (``#`` comments), kept only as SHA-256 digests."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError("server.auth_keys_file", str(path), f"cannot read: {exc}") from exc
    keys = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    if not keys:
        raise ConfigError("server.auth_keys_file", str(path), "holds no key")
    return frozenset(hashlib.sha256(k.encode()).hexdigest() for k in keys)


class Gateway:
    """One gateway: ``await gateway.start()`` … ``await gateway.stop()`` (or ASGI lifespan)."""

    def __init__(self, config: Config, backends: Sequence[BackendSpec]) -> None:
        self.config = config
        pool_cfg = config.pool
        self.pool = Pool(
            backends,
            PoolSettings(
                selection=pool_cfg.selection,
                queue_limit=pool_cfg.queue_limit,
                lease_timeout=pool_cfg.lease_timeout,
                unhealthy_after=pool_cfg.unhealthy_after,
                cooldown=pool_cfg.cooldown,
            ),
            elastic=pool_cfg.provisioner is not None or not backends,
        )
        self.metrics = GatewayMetrics(self.pool.snapshot, lambda: self.pool.waiting)
        self.state = GatewayState.NEW
        self._keys: frozenset[str] | None = None
        self._active = 0
        self._max_sessions = config.server.max_sessions
        self._body_limit = config.server.max_body_bytes
        self._access_log = config.log.access
        self._models_cache: tuple[float, bytes] | None = None
        self._debug: DebugRecorder | None = None
        if config.debug.enabled:
            self._debug = DebugRecorder(
                config.debug, config.pool.queue_limit, config.pool.selection
            )
        provider = config.pool.provider
        self._translate: TranslateOptions | None = None
        if provider.mode == "chat":
            self._translate = TranslateOptions(
                PROFILES[provider.profile].with_drops(provider.drop_fields),
                provider.model_map,
                provider.default_model,
                provider.reasoning,
            )
        self.started_at = time.time()
        self._stack = AsyncExitStack()
        self._session: aiohttp.ClientSession | None = None
        self._forwarder: Forwarder | None = None
        self._relay: WebSocketRelay | None = None
        self._chat_ws: ChatWebSocket | None = None
        self._ops = Operations(self)
        self.elastic: Elastic | None = None
        self._events: StreamEvents | None = None
        self.mcp = {
            route.path: McpHttp(Route(route), config.server.max_body_bytes) for route in config.mcp
        }
        self._mcp_paths = {path: e for e in self.mcp.values() for path in e.paths}
        self._mcp_stopping: asyncio.Task[None] | None = None

    # -- lifecycle -----------------------------------------------------------------------------
    async def start(self) -> None:
        if self.state is not GatewayState.NEW:
            raise StateError(f"gateway cannot start in state {self.state.value}")
        server, upstream = self.config.server, self.config.upstream
        if server.auth_keys_file is not None:
            self._keys = load_keys(server.auth_keys_file)
        connector = aiohttp.TCPConnector(
            limit=0, limit_per_host=0, keepalive_timeout=60, ttl_dns_cache=300
        )
        self._session = await self._stack.enter_async_context(
            aiohttp.ClientSession(
                connector=connector,
                timeout=aiohttp.ClientTimeout(
                    total=None,
                    sock_connect=upstream.connect_timeout,
                    sock_read=upstream.read_timeout,
                ),
                auto_decompress=False,
                cookie_jar=aiohttp.DummyCookieJar(),
            )
        )
        client = await self._stack.enter_async_context(
            UpstreamClient(
                connect_timeout=upstream.connect_timeout, read_timeout=upstream.read_timeout
            )
        )
        await self._stack.enter_async_context(self.pool)
        provisioner_cfg = self.config.pool.provisioner
        if provisioner_cfg is not None:
            provisioner = build_provisioner(provisioner_cfg)
            if provisioner_cfg.events and provisioner.has_status:
                self._events = StreamEvents(provisioner, provisioner_cfg.event_timeout, self._debug)
            self.elastic = await self._stack.enter_async_context(
                Elastic(
                    self.pool,
                    provisioner,
                    provisioner_cfg,
                    self.config.pool.max_concurrency,
                    self._debug,
                    on_release=lambda spec: client.forget(Origin.parse(spec.base_url)),
                )
            )
            if self._events is not None:
                self._stack.push_async_callback(self._events.close)
        strip = self._keys is not None
        self._forwarder = Forwarder(
            client,
            self.pool,
            self.metrics,
            retries=self.config.pool.retries,
            strip_client_auth=strip,
            debug=self._debug,
            events=self._events,
        )
        if self._translate is not None:
            self._chat_ws = ChatWebSocket(self._forwarder, self._translate)
        self._relay = WebSocketRelay(
            self._session, self.pool, strip_client_auth=strip, retries=self.config.pool.retries
        )
        for endpoint in self.mcp.values():
            await endpoint.route.start(self._session)
        self._stack.push_async_callback(self._stop_mcp)
        probe = self.config.pool.probe
        if probe.enabled:
            await self._stack.enter_async_context(Prober(self.pool, self._probe, probe.interval))
        self.state = GatewayState.SERVING
        if self._debug is not None:
            self._debug.start(
                backends=[b.id for b in self.pool.backends],
                selection=self.config.pool.selection,
                provider=self.config.pool.provider.mode,
                listen=f"{server.host}:{server.port}",
            )
            self._stack.callback(self._debug.stop)
        event(
            _log,
            "gateway_started",
            backends=len(self.pool.backends),
            selection=self.config.pool.selection,
        )

    async def stop(self) -> None:
        if self.state in (GatewayState.STOPPED, GatewayState.NEW):
            self.state = GatewayState.STOPPED
            return
        self.state = GatewayState.DRAINING
        await self._stack.aclose()
        self.state = GatewayState.STOPPED
        event(_log, "gateway_stopped")

    def begin_drain(self) -> None:
        """Called when a shutdown signal arrives: /ready turns 503 while in-flight requests end.

        MCP sessions end now (they are long-lived: waiting for them would take the whole grace);
        their clients get a JSON-RPC error for what is in flight and their children stop."""
        if self.state is GatewayState.SERVING:
            self.state = GatewayState.DRAINING
        if self.mcp and self._mcp_stopping is None:
            self._mcp_stopping = asyncio.ensure_future(self._stop_mcp())

    async def _stop_mcp(self) -> None:
        if self._mcp_stopping is not None and self._mcp_stopping is not asyncio.current_task():
            await self._mcp_stopping
            return
        await asyncio.gather(*(e.route.stop() for e in self.mcp.values()))

    async def _probe(self, backend: BackendSpec) -> bool:
        assert self._session is not None
        probe = self.config.pool.probe
        try:
            async with self._session.get(
                backend.base_url + probe.path,
                headers=dict(backend.headers),
                timeout=aiohttp.ClientTimeout(total=probe.timeout),
            ) as response:
                await response.read()
                return response.status < 500
        except (TimeoutError, aiohttp.ClientError, OSError):
            return False

    # -- ASGI ------------------------------------------------------------------------------------
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            path = scope["path"]
            if path.startswith("/v1/") or path == "/v1":
                await self._proxy(scope, receive, send, path)
            elif path in self._mcp_paths:
                await self._mcp(scope, receive, send, path)
            else:
                await self._ops.handle(scope, send, path)
        elif kind == "websocket":
            await self._websocket(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.start()
                except Exception as exc:
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    raise
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.stop()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _mcp(self, scope: Scope, receive: Receive, send: Send, path: str) -> None:
        try:
            self.authorize(scope)
        except Unauthorized as error:
            await send_mcp_error(send, 401, error.message)
            return
        endpoint = self._mcp_paths[path]
        await endpoint.dispatch(scope, receive, send, path, self.client_identity(scope))

    def client_identity(self, scope: Scope) -> str:
        """Who a client is, for per-client limits: its key (as a short digest) when client auth
        is on, else its address."""
        key = client_credential(scope["headers"]) if self._keys is not None else None
        if key is not None:
            return "key-" + hashlib.sha256(key.encode()).hexdigest()[:12]
        peer = scope.get("client")
        return str(peer[0]) if peer else "unknown"

    # -- the proxied routes ----------------------------------------------------------------------
    def authorize(self, scope: Scope) -> None:
        if self._keys is None:
            return
        key = client_credential(scope["headers"])
        if key is None:
            raise Unauthorized("missing API key: send 'Authorization: Bearer <key>' or X-API-Key")
        if hashlib.sha256(key.encode()).hexdigest() not in self._keys:
            raise Unauthorized("invalid API key")

    async def _proxy(self, scope: Scope, receive: Receive, send: Send, path: str) -> None:
        sent = Sent(started=time.perf_counter())
        rid = request_id(_header(scope, b"x-request-id"))
        route = _ROUTES.get(path, "passthrough")
        counted = False
        try:
            self.authorize(scope)
            if self._active >= self._max_sessions:
                raise Overloaded(
                    f"{self._active} requests in flight (server.max_sessions)", retry_after=1.0
                )
            self._active += 1
            counted = True
            await self._serve(scope, receive, send, path, route, rid, sent)
        except GatewayError as error:
            if not sent.status:
                sent.status = error.status
                await send_error(send, error, rid.encode())
            if self._debug is not None and isinstance(error, NoHealthyBackend):
                self._debug.no_healthy_backend(rid, len(self.pool.backends))
        except ClientGone:
            sent.status = sent.status or 499
            sent.gone = True
        except StreamBroken:
            pass  # the response is left incomplete on purpose; the client sees the truncation
        except Exception:
            _log.exception("request %s failed inside the gateway", rid)
            if self._debug is not None:
                self._debug.error(rid, "gateway", "request", sys.exc_info()[1] or Exception())
            if not sent.status:
                sent.status = 500
                await send_error(send, GatewayError("internal error in the gateway"), rid.encode())
        except asyncio.CancelledError:
            # The server cancels what is left when the drain grace runs out: say so, and end.
            await self._cancelled(send, rid, sent)
        finally:
            if counted:
                self._active -= 1
            self._record(scope, path, route, rid, sent)

    async def _serve(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        path: str,
        route: str,
        rid: str,
        sent: Sent,
    ) -> None:
        tail = upstream_path(path, scope.get("raw_path"), scope["query_string"])
        body = await read_body(scope, receive, self._body_limit)
        method = scope["method"]
        transform: Transform | None = None
        if route in _JSON_ROUTES and method == "POST":
            data = _check_json(body)
            if route == "responses" and self._translate is not None:
                tail, body, transform = self._to_chat(data, rid)
        if route == "models" and method == "GET":
            if await self._models(send, rid, sent):
                return
            send = self._caching_models(send)
        await self._forward_watched(scope, receive, send, rid, tail, body, sent, transform)

    def _to_chat(self, data: dict[str, Any], rid: str) -> tuple[str, bytes, Transform]:
        """``provider: chat``: the Responses request as a Chat Completions one."""
        assert self._translate is not None
        chat = responses_to_chat(data, self._translate)
        if chat.dropped:
            event(_log, "translation_dropped", logging.DEBUG, request_id=rid, fields=chat.dropped)
        shape = ResponseShape.of(data, f"resp_{rid}", int(time.time()))
        return "/chat/completions", dumps(chat.body), ChatToResponses(shape, chat.stream)

    def _record(self, scope: Scope, path: str, route: str, rid: str, sent: Sent) -> None:
        elapsed = time.perf_counter() - sent.started
        self.metrics.observe(route, sent.status or 499, elapsed)
        if self._events is not None:
            self._events.ended(rid, sent.end_reason())
        debug = self._debug
        if debug is not None:  # the request's row for debug mode (see debuglog.columns)
            if (  # an ordinary request: sampled under extreme load (see DebugRecorder)
                0 < sent.status < 400
                and elapsed <= debug.fast
                and not sent.gone
                and (sent.selection is None or not sent.selection[4])
            ):
                weight = debug.unrecorded + 1
                if weight < debug.every:  # not recorded: all it costs is this count
                    debug.unrecorded = weight
                    if sent.sse:
                        self._debug_request(debug, rid, sent, elapsed)
                else:
                    debug.unrecorded = 0
                    self._debug_row(debug, scope, path, rid, sent, elapsed, weight)
            else:
                self._debug_row(debug, scope, path, rid, sent, elapsed, 1)
        if self._access_log:
            event(
                _log,
                "request",
                method=scope["method"],
                path=path,
                status=sent.status,
                request_id=rid,
                backend=sent.backend,
                bytes=sent.bytes,
                duration_ms=round(elapsed * 1000, 2),
            )

    def _debug_row(
        self,
        debug: DebugRecorder,
        scope: Scope,
        path: str,
        rid: str,
        sent: Sent,
        elapsed: float,
        weight: int,
    ) -> None:
        """The request's row (standing for ``weight`` requests), and whatever else it records."""
        rows = debug.requests
        rows.append(
            (
                rid,
                scope["method"],
                path,
                sent.backend,
                sent.status or 499,
                sent.started,
                elapsed,
                sent.bytes,
                sent.first_byte,
                sent.lease(len(self.pool.backends)),
                weight,
            )
        )
        if len(rows) >= debug.burst:  # a burst: sampling may have to start now
            debug.resample()
        if elapsed > debug.slow_request or sent.sse or sent.gone:
            self._debug_request(debug, rid, sent, elapsed)

    @staticmethod
    def _debug_request(debug: DebugRecorder, rid: str, sent: Sent, elapsed: float) -> None:
        """What a slow, streamed or abandoned request records besides its row."""
        if elapsed > debug.slow_request:
            debug.slow(rid, elapsed)
        if sent.sse:
            debug.stream(
                rid,
                "ended",
                sent.backend,
                reason=sent.end_reason(),
                duration_ms=round(elapsed * 1000, 3),
                bytes=sent.bytes,
            )
        if sent.gone:
            debug.disconnect(
                rid, "streaming" if sent.first_byte else "waiting", elapsed, sent.backend
            )

    async def _cancelled(self, send: Send, rid: str, sent: Sent) -> None:
        task = asyncio.current_task()
        if task is not None:
            task.uncancel()
        error = PoolClosed("the gateway is shutting down; retry", retry_after=1.0)
        with contextlib.suppress(OSError, RuntimeError):
            if not sent.status:
                sent.status = error.status
                await send_error(send, error, rid.encode())
            elif sent.sse and not sent.complete:
                sent.complete = True
                await send({"type": "http.response.body", "body": sse_error(error)})

    async def _forward_watched(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        rid: str,
        tail: str,
        body: bytes,
        sent: Sent,
        transform: Transform | None = None,
    ) -> None:
        """Forward, cancelling everything (and freeing the lease) the moment the client leaves."""
        assert self._forwarder is not None
        task = asyncio.current_task()
        assert task is not None
        gone = False

        def on_message(watcher: asyncio.Future[Any]) -> None:
            nonlocal gone
            if sent.complete or watcher.cancelled() or watcher.exception() is not None:
                return
            if watcher.result().get("type") == "http.disconnect":
                gone = True
                task.cancel()

        watcher = asyncio.ensure_future(receive())
        watcher.add_done_callback(on_message)
        try:
            await self._forwarder.forward(scope, send, rid, tail, body, sent, transform)
        except asyncio.CancelledError:
            if gone:
                task.uncancel()
                raise ClientGone() from None
            raise
        finally:
            sent.complete = True
            if not watcher.done():
                watcher.cancel()

    async def _models(self, send: Send, rid: str, sent: Sent) -> bool:
        """Serve /v1/models from config or cache; False when the upstream must be asked."""
        configured = self.config.server.models or (
            tuple(self.config.pool.provider.model_map) if self._translate is not None else ()
        )
        if configured:
            data = {
                "object": "list",
                "data": [
                    {"id": m, "object": "model", "created": 0, "owned_by": "proxyfleet"}
                    for m in configured
                ],
            }
            await send_json(send, 200, data, rid.encode())
            sent.status = 200
            return True
        cached = self._models_cache
        if (
            cached is not None
            and time.monotonic() - cached[0] < self.config.server.models_cache_ttl
        ):
            await send_json(send, 200, json.loads(cached[1]), rid.encode())
            sent.status = 200
            return True
        return False

    def _caching_models(self, send: Send) -> Send:
        """Wrap ``send`` so that a 200 answer to /v1/models is kept for ``models_cache_ttl``."""
        parts: list[bytes] = []
        status = 0

        async def capture(message: Any) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            elif status == 200:
                parts.append(message.get("body", b""))
                if not message.get("more_body"):
                    self._models_cache = (time.monotonic(), b"".join(parts))
            await send(message)

        return capture

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        assert self._relay is not None
        path = scope["path"]
        try:
            self.authorize(scope)
            if not (path.startswith("/v1/") or path == "/v1"):
                raise NotFound(f"no WebSocket route at {path}")
            if self._active >= self._max_sessions:
                raise Overloaded("too many requests in flight", retry_after=1.0)
            tail = upstream_path(path, scope.get("raw_path"), scope["query_string"])
        except GatewayError as error:
            await receive()  # websocket.connect
            await reject(scope, send, error)
            return
        self._active += 1
        try:
            if self._chat_ws is not None and tail == "/responses":
                rid = request_id(_header(scope, b"x-request-id"))
                await self._chat_ws.serve(scope, receive, send, rid)
                return
            await self._relay.relay(
                scope, receive, send, tail, request_id(_header(scope, b"x-request-id"))
            )
        finally:
            self._active -= 1

    # -- operations endpoints ------------------------------------------------------------------
    def readiness(self) -> tuple[bool, str]:
        if self.state is not GatewayState.SERVING:
            return False, f"gateway is {self.state.value}"
        if not self.pool.ready():
            if self.elastic is not None and self.elastic.can_grow():
                return True, "ready (backends are provisioned on demand)"
            if self.mcp and not self.pool.backends and self.config.pool.provisioner is None:
                return True, "ready (MCP routes only)"
            return False, "no healthy backend"
        return True, "ready"

    @property
    def in_flight(self) -> int:
        return self._active


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key == name:
            return value  # type: ignore[no-any-return]
    return None


def _check_json(body: bytes) -> dict[str, Any]:
    if not body:
        raise BadRequest("request body must be a JSON object", code="invalid_json")
    try:
        data = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BadRequest(f"malformed JSON: {exc}", code="invalid_json") from exc
    if not isinstance(data, dict):
        raise BadRequest("request body must be a JSON object", code="invalid_json")
    return data
