"""The gateway: the composition root of one serving process, and its raw ASGI entry point.

:meth:`Gateway.start` builds every runtime object once (transports, pool, elastic growth,
debug recording, the routes) in one exit stack that :meth:`Gateway.stop` unwinds. Requests are
dispatched by path: ``/v1/...`` to the OpenAI routes (:mod:`.openai`), an MCP route's paths to
the MCP mount, everything else to the operations endpoints (:mod:`.ops`); WebSocket upgrades
to :mod:`.websocket`.
"""

from __future__ import annotations

import enum
import logging
import time
from collections.abc import Callable, Coroutine, Mapping, Sequence
from contextlib import AsyncExitStack
from typing import Any

from proxyfleet._asgi import Receive, Scope, Send, lifespan, send_error
from proxyfleet.config.model import Config
from proxyfleet.debuglog.recorder import DebugRecorder
from proxyfleet.debuglog.requests import RequestLog
from proxyfleet.errors import (
    PoolClosed,
    ProxyfleetError,
    StateError,
    StoreUnavailable,
    Unauthorized,
)
from proxyfleet.gateway.admission import Admission
from proxyfleet.gateway.auth import ClientAuth
from proxyfleet.gateway.failover import Failover
from proxyfleet.gateway.forward import Abandon, Forwarder
from proxyfleet.gateway.metrics import GatewayMetrics
from proxyfleet.gateway.models import Models
from proxyfleet.gateway.openai import OpenAIRoutes
from proxyfleet.gateway.ops import Operations
from proxyfleet.gateway.probe import probe_check
from proxyfleet.gateway.translate_ws import ChatWebSocket
from proxyfleet.gateway.turns import MemoryLimits
from proxyfleet.gateway.websocket import WebSocketRelay, WebSocketRoutes
from proxyfleet.logs import event
from proxyfleet.mcpproxy.http import send_mcp_error
from proxyfleet.mcpproxy.mount import McpMount
from proxyfleet.orchestrator import Elastic, StreamEvents, build_provisioner
from proxyfleet.pool import BackendSpec, Pool, PoolStore
from proxyfleet.pool.health import HealthPolicy
from proxyfleet.pool.prober import Prober
from proxyfleet.providers.request import TranslateOptions
from proxyfleet.transports import HttpTransport, Transport, Transports

__all__ = ["Gateway", "GatewayState"]

_log = logging.getLogger("proxyfleet.gateway")
Handler = Callable[[Scope, Receive, Send], Coroutine[Any, Any, None]]


class GatewayState(enum.Enum):
    NEW = "new"
    SERVING = "serving"
    DRAINING = "draining"
    STOPPED = "stopped"


Routed = Callable[[Scope, Receive, Send, str], Coroutine[Any, Any, None]]
OpsHandler = Callable[[Scope, Send, str], Coroutine[Any, Any, None]]


async def _not_serving(scope: Scope, receive: Receive, send: Send) -> None:
    """Before start (and after stop) there is nothing to serve with."""
    if scope["type"] == "http":
        await send_error(send, PoolClosed("the gateway is not serving", retry_after=1.0))
    else:
        await send({"type": "websocket.close", "code": 1013, "reason": "not serving"})


async def _not_serving_path(scope: Scope, receive: Receive, send: Send, path: str) -> None:
    await _not_serving(scope, receive, send)


async def _not_serving_ops(scope: Scope, send: Send, path: str) -> None:
    await send_error(send, PoolClosed("the gateway is not serving", retry_after=1.0))


def shared_store(
    config: Config, backends: Sequence[BackendSpec], clock: Callable[[], float]
) -> PoolStore | None:
    """The pool store ``pool.store`` names, or None for this process's own (memory)."""
    redis = config.pool.store.redis
    if redis is None:
        return None
    from proxyfleet.pool.redis import RedisStore  # redis-py only where it is used

    pool = config.pool
    return RedisStore(
        [spec.member for spec in backends],
        HealthPolicy(pool.unhealthy_after, pool.cooldown),
        clock,
        url=redis.url,
        key_prefix=redis.key_prefix,
        lease_ttl=redis.lease_ttl,
        timeout=redis.timeout,
    )


class Gateway:
    """One gateway: ``await gateway.start()`` … ``await gateway.stop()`` (or ASGI lifespan).

    ``transports`` maps backend kinds to transports (default: ``http`` only); ``clock`` is the
    pool's health clock (unix seconds; tests give a virtual one)."""

    def __init__(
        self,
        config: Config,
        backends: Sequence[BackendSpec],
        *,
        transports: Mapping[str, Transport] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.pool = Pool(
            backends,
            config.pool.settings(),
            shared_store(config, backends, clock),
            elastic=config.pool.provisioner is not None or not backends,
            clock=clock,
        )
        self.failure: ProxyfleetError | None = None  # why start failed, for the exit code
        self.metrics = GatewayMetrics()
        self.mcp = McpMount(config.mcp, config.server.max_body_bytes)
        self.admission = Admission(config.server.max_sessions)
        self.elastic: Elastic | None = None  # only when pool.provisioner is configured
        self.state = GatewayState.NEW
        self.started_at = time.time()
        self._transports = transports
        self._stack = AsyncExitStack()
        self._auth = ClientAuth(None)
        self._openai: Routed = _not_serving_path
        self._ops: OpsHandler = _not_serving_ops
        self._websocket: Handler = _not_serving

    # -- lifecycle -----------------------------------------------------------------------------
    async def start(self) -> None:
        if self.state is not GatewayState.NEW:
            raise StateError(f"gateway cannot start in state {self.state.value}")
        try:
            await self._start()
        except BaseException as exc:
            if isinstance(exc, ProxyfleetError):
                self.failure = exc
            await self._stack.aclose()
            raise

    async def _start(self) -> None:
        config, stack = self.config, self._stack
        auth = self._auth = ClientAuth.from_file(config.server.auth_keys_file)
        given = self._transports or {
            "http": HttpTransport(
                connect_timeout=config.upstream.connect_timeout,
                read_timeout=config.upstream.read_timeout,
            )
        }
        transports = await stack.enter_async_context(Transports(given))
        await stack.enter_async_context(self.pool)
        recorder = None
        if config.debug.enabled:
            recorder = DebugRecorder(config.debug, config.pool.queue_limit, config.pool.selection)
        debug = None if recorder is None else RequestLog(recorder)
        events = await self._elastic(transports, recorder)
        abandon = Abandon(config.pool.abandon, config.pool.abandon_grace)
        failover = Failover(
            self.pool, transports, self.metrics, retries=config.pool.retries, debug=debug
        )
        translate = TranslateOptions.of(config.pool.provider)
        models = config.server.models
        if not models and translate is not None:
            models = tuple(config.pool.provider.model_map)
        self._openai = OpenAIRoutes(
            Forwarder(
                failover,
                abandon=abandon,
                debug=recorder,
                events=events,
            ),
            auth=auth,
            admission=self.admission,
            metrics=self.metrics,
            models=Models(models, config.server.models_cache_ttl),
            body_limit=config.server.max_body_bytes,
            max_json_depth=config.server.max_json_depth,
            pool_size=lambda: self.pool.size,
            translate=translate,
            events=events,
            debug=debug,
            access_log=config.log.access,
        )
        self._ops = Operations(
            config,
            self.pool,
            self.metrics,
            self.readiness,
            auth=auth,
            admission=self.admission,
            mcp=self.mcp,
            elastic=self.elastic,
            started_at=self.started_at,
        ).handle
        self._websocket = WebSocketRoutes(
            WebSocketRelay(failover, strip_client_auth=auth.enabled),
            None
            if translate is None
            else ChatWebSocket(
                failover,
                translate,
                strip=auth.enabled,
                abandon=abandon,
                memory=MemoryLimits.of(config.pool.provider),
            ),
            auth=auth,
            admission=self.admission,
        )
        await stack.enter_async_context(self.mcp)
        probe = config.pool.probe
        if probe.enabled:
            check = probe_check(transports, probe.path, probe.timeout)
            await stack.enter_async_context(Prober(self.pool, check, probe.interval))
        self.state = GatewayState.SERVING
        if recorder is not None:
            recorder.start(
                backends=[b.id for b in self.pool.backends],
                selection=config.pool.selection,
                provider=config.pool.provider.mode,
                listen=f"{config.server.host}:{config.server.port}",
            )
            stack.callback(recorder.stop)
        event(_log, "gateway_started", backends=self.pool.size, selection=config.pool.selection)

    async def _elastic(
        self, transports: Transports, debug: DebugRecorder | None
    ) -> StreamEvents | None:
        """The elastic pool's controller (and its stream events), when a provisioner is set."""
        config = self.config.pool.provisioner
        if config is None:
            return None
        provisioner = build_provisioner(config)
        events = None
        if config.events and provisioner.has_status:
            events = StreamEvents(provisioner, config.event_timeout, debug)
        self.elastic = await self._stack.enter_async_context(
            Elastic(
                self.pool,
                provisioner,
                config,
                self.config.pool.max_concurrency,
                debug,
                on_release=lambda spec: transports.of(spec).forget(spec),
            )
        )
        if events is not None:
            self._stack.push_async_callback(events.close)
        return events

    async def stop(self) -> None:
        if self.state in (GatewayState.STOPPED, GatewayState.NEW):
            self.state = GatewayState.STOPPED
            return
        self.state = GatewayState.DRAINING
        await self._stack.aclose()
        self._openai, self._ops, self._websocket = (
            _not_serving_path,
            _not_serving_ops,
            _not_serving,
        )
        self.state = GatewayState.STOPPED
        event(_log, "gateway_stopped")

    def begin_drain(self) -> None:
        """Called when a shutdown signal arrives: /ready turns 503 while in-flight requests end;
        MCP sessions end now (see :meth:`McpMount.begin_stop`)."""
        if self.state is GatewayState.SERVING:
            self.state = GatewayState.DRAINING
        self.mcp.begin_stop()

    async def readiness(self) -> tuple[bool, str]:
        if self.state is not GatewayState.SERVING:
            return False, f"gateway is {self.state.value}"
        try:
            ready = await self.pool.ready()
        except StoreUnavailable as error:
            return False, error.message
        if not ready:
            if self.elastic is not None and self.elastic.can_grow():
                return True, "ready (backends are provisioned on demand)"
            if self.mcp and not self.pool.size and self.config.pool.provisioner is None:
                return True, "ready (MCP routes only)"
            return False, "no healthy backend"
        return True, "ready"

    # -- ASGI ------------------------------------------------------------------------------------
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            path = scope["path"]
            if path.startswith("/v1/") or path == "/v1":
                await self._openai(scope, receive, send, path)
            elif self.mcp.owns(path):
                await self._mcp(scope, receive, send, path)
            else:
                await self._ops(scope, send, path)
        elif kind == "websocket":
            await self._websocket(scope, receive, send)
        elif kind == "lifespan":
            await lifespan(receive, send, self.start, self.stop)

    async def _mcp(self, scope: Scope, receive: Receive, send: Send, path: str) -> None:
        try:
            self._auth.authorize(scope)
        except Unauthorized as error:
            await send_mcp_error(send, 401, error.message)
            return
        await self.mcp.dispatch(scope, receive, send, path, self._auth.identity(scope))

    @property
    def in_flight(self) -> int:
        return self.admission.active
