"""A mock orchestrator: the acestream-orchestrator API shape, provisioning mock upstreams.

``POST /provision/acestream`` starts ``proxyfleet mock`` on a free port (a real process) and
answers ``{"container_id", "host_http_port", ...}``; ``DELETE /containers/{id}`` stops it;
``GET /engines`` lists them; ``GET /orchestrator/status`` reports health and whether it can
provision; ``POST /events/stream_started|stream_ended`` are recorded (``GET /mock/events``).
Faults (``--fault`` or ``POST /mock/faults``): ``slow`` seconds per provisioning, ``blocked``
(with an ETA), ``breaker`` (its own circuit breaker open, with an ETA), ``degraded``, ``fail``
(the next N provisionings fail with 500; -1 = all of them) and ``refuse`` (a refusal that must
not be retried). Every engine is stopped when the mock stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import itertools
import os
import re
import signal
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from aiohttp import web

from proxyfleet.debuglog.writer import DebugLog
from proxyfleet.mock.runner import start_site, stop_event
from proxyfleet.mock.server import check_fields

__all__ = ["Faults", "OrchestratorMock", "build_orchestrator_app"]

_LISTENING = re.compile(rb"listening on http://[^:]+:(\d+)/")


@dataclass(frozen=True)
class Faults:
    slow: float = 0.0  # seconds before a provisioning answers
    blocked: float | None = None  # ETA seconds: cannot provision (VPN down)
    breaker: float | None = None  # ETA seconds: the orchestrator's own breaker is open
    degraded: bool = False  # status degraded, provisioning still possible
    fail: int = 0  # the next N provisionings fail with 500; -1 = every one
    refuse: bool = False  # provisioning refused, not retryable

    def updated(self, changes: dict[str, Any]) -> Faults:
        check_fields(self, changes, "fault")
        for name in ("slow", "blocked", "breaker"):
            value = changes.get(name)
            if value is not None and (not isinstance(value, int | float) or value < 0):
                raise ValueError(f"{name} must be a number of seconds >= 0")
        if "fail" in changes and not isinstance(changes["fail"], int):
            raise ValueError("fail must be an integer (-1 = every provisioning)")
        return replace(self, **changes)


@dataclass
class _Engine:
    id: str
    port: int
    process: asyncio.subprocess.Process
    created: float = field(default_factory=time.time)


class OrchestratorMock:
    """The state behind the app: engines (real processes), faults, counters, events."""

    def __init__(
        self,
        faults: Faults,
        *,
        api_key: str | None = None,
        max_engines: int = 20,
        engine_args: tuple[str, ...] = (),
        debug: DebugLog | None = None,
    ) -> None:
        self.faults = faults
        self.api_key = api_key
        self.max_engines = max_engines
        self.engine_args = engine_args
        self.debug = debug
        self.engines: dict[str, _Engine] = {}
        self.events: list[dict[str, Any]] = []
        self.counts = {
            "provision_requests": 0,
            "provisioned": 0,
            "failed": 0,
            "released": 0,
            "unauthorized": 0,
        }
        self._ids = itertools.count(1)
        self._lock = asyncio.Lock()

    # -- engines (real mock upstream processes) -------------------------------------------
    async def start_engine(self) -> _Engine:
        engine_id = f"mock-engine-{next(self._ids)}"
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "proxyfleet",
            "mock",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--name",
            engine_id,
            *self.engine_args,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
            start_new_session=True,
            env=dict(os.environ, PROXYFLEET_DIE_WITH_PARENT=str(os.getpid())),
        )
        assert process.stdout is not None
        try:
            line = await asyncio.wait_for(process.stdout.readline(), 30)
        except TimeoutError:
            line = b""
        match = _LISTENING.search(line)
        if match is None:
            await _stop_process(process)
            raise RuntimeError(f"engine {engine_id} did not start (said {line!r})")
        engine = _Engine(engine_id, int(match.group(1)), process)
        self.engines[engine_id] = engine
        return engine

    async def stop_engine(self, engine_id: str) -> bool:
        engine = self.engines.pop(engine_id, None)
        if engine is None:
            return False
        await _stop_process(engine.process)
        return True

    async def stop_all(self) -> None:
        await asyncio.gather(*(self.stop_engine(e) for e in list(self.engines)))

    # -- answers -----------------------------------------------------------------------------
    def blocked_detail(self) -> dict[str, Any] | None:
        faults = self.faults
        if faults.breaker is not None:
            return _detail("circuit_breaker", "Circuit breaker is open", faults.breaker)
        if faults.blocked is not None:
            return _detail("vpn_disconnected", "VPN is disconnected", faults.blocked)
        if len(self.engines) >= self.max_engines:
            return _detail("max_capacity", f"At max capacity ({self.max_engines} engines)", 30)
        return None

    def status(self) -> dict[str, Any]:
        detail = self.blocked_detail()
        faults = self.faults
        if faults.breaker is not None or faults.degraded:
            overall = "degraded"
        elif faults.blocked is not None:
            overall = "unavailable"
        else:
            overall = "healthy"
        return {
            "status": overall,
            "provisioning": {
                "can_provision": detail is None and not faults.refuse,
                "blocked_reason": None if detail is None else detail["message"],
                "blocked_reason_details": detail,
            },
            "engines": {"total": len(self.engines)},
            "streams": {"active": self.active_streams()},
            "capacity": {
                "total": self.max_engines,
                "used": len(self.engines),
                "available": max(0, self.max_engines - len(self.engines)),
            },
        }

    def active_streams(self) -> int:
        open_: set[str] = set()
        for item in self.events:
            key = item["stream_id"]
            if item["kind"] == "started":
                open_.add(key)
            else:
                open_.discard(key)
        return len(open_)

    def log(self, category: str, rid: str | None, **values: Any) -> None:
        if self.debug is not None:
            self.debug.log(category, rid, **values)


def _detail(code: str, message: str, eta: float) -> dict[str, Any]:
    return {
        "error": "provisioning_blocked",
        "code": code,
        "message": message,
        "recovery_eta_seconds": eta,
        "can_retry": True,
        "should_wait": True,
    }


async def _stop_process(process: asyncio.subprocess.Process) -> None:
    """SIGTERM to the engine's process group, SIGKILL after 5 s; always reaped."""
    if process.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), 5)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            await process.wait()


ORCHESTRATOR = web.AppKey("orchestrator", OrchestratorMock)


def _authorized(request: web.Request) -> bool:
    mock = request.app[ORCHESTRATOR]
    if mock.api_key is None:
        return True
    given = request.headers.get("Authorization", "")
    if hmac.compare_digest(given.encode(), f"Bearer {mock.api_key}".encode()):
        return True
    mock.counts["unauthorized"] += 1
    return False


def _unauthorized() -> web.Response:
    return web.json_response({"detail": "invalid or missing API key"}, status=401)


async def provision(request: web.Request) -> web.Response:
    mock = request.app[ORCHESTRATOR]
    if not _authorized(request):
        return _unauthorized()
    rid = request.headers.get("X-Request-ID")
    mock.counts["provision_requests"] += 1
    started = time.perf_counter()
    mock.log("provisioning", rid, operation="start_acestream_begin")
    if mock.faults.slow:
        await asyncio.sleep(mock.faults.slow)
    faults = mock.faults  # as they are now: a change made while it slept counts

    def failed(status: int, body: dict[str, Any], error: str) -> web.Response:
        mock.counts["failed"] += 1
        mock.log(
            "provisioning",
            rid,
            operation="start_acestream_failed",
            success=False,
            error=error,
            duration_ms=round((time.perf_counter() - started) * 1000, 3),
        )
        return web.json_response(body, status=status)

    if faults.refuse:
        detail = {
            "error": "provisioning_refused",
            "code": "invalid_configuration",
            "message": "engine image is not configured",
            "can_retry": False,
            "should_wait": False,
        }
        return failed(400, {"detail": detail}, "refused")
    detail_blocked = mock.blocked_detail()
    if detail_blocked is not None:
        return failed(503, {"detail": detail_blocked}, detail_blocked["code"])
    if faults.fail:
        if faults.fail > 0:
            mock.faults = replace(faults, fail=faults.fail - 1)
        return failed(500, {"detail": "engine container failed to start"}, "start_failed")
    async with mock._lock:  # one engine start at a time, like a docker daemon
        try:
            engine = await mock.start_engine()
        except (RuntimeError, OSError) as exc:
            return failed(500, {"detail": str(exc)}, "start_failed")
    mock.counts["provisioned"] += 1
    mock.log(
        "provisioning",
        rid,
        operation="start_acestream_end",
        success=True,
        container_id=engine.id,
        port=engine.port,
        duration_ms=round((time.perf_counter() - started) * 1000, 3),
    )
    return web.json_response(
        {
            "container_id": engine.id,
            "host_http_port": engine.port,
            "container_http_port": engine.port,
            "container_https_port": None,
        }
    )


async def release(request: web.Request) -> web.Response:
    mock = request.app[ORCHESTRATOR]
    if not _authorized(request):
        return _unauthorized()
    engine_id = request.match_info["id"]
    if not await mock.stop_engine(engine_id):
        return web.json_response({"detail": f"no engine {engine_id}"}, status=404)
    mock.counts["released"] += 1
    mock.log("provisioning", None, operation="engine_deleted", container_id=engine_id)
    return web.json_response({"deleted": engine_id})


async def engines(request: web.Request) -> web.Response:
    mock = request.app[ORCHESTRATOR]
    return web.json_response(
        [
            {
                "container_id": e.id,
                "host": "127.0.0.1",
                "port": e.port,
                "health_status": "healthy" if e.process.returncode is None else "unhealthy",
                "pid": e.process.pid,
                "created": e.created,
            }
            for e in mock.engines.values()
        ]
    )


async def status(request: web.Request) -> web.Response:
    mock = request.app[ORCHESTRATOR]
    body = mock.status()
    mock.log(
        "orchestrator_health",
        None,
        status=body["status"],
        can_provision=body["provisioning"]["can_provision"],
        engine_count=len(mock.engines),
    )
    return web.json_response(body)


async def stream_event(request: web.Request) -> web.Response:
    mock = request.app[ORCHESTRATOR]
    if not _authorized(request):
        return _unauthorized()
    kind = request.match_info["kind"]
    try:
        body = await request.json()
    except ValueError:
        return web.json_response({"detail": "body must be JSON"}, status=400)
    if not isinstance(body, dict):
        return web.json_response({"detail": "body must be a JSON object"}, status=400)
    if kind == "started":
        labels = body.get("labels")
        stream_id = str(labels.get("stream_id") or "") if isinstance(labels, dict) else ""
    else:
        stream_id = str(body.get("stream_id") or "")
    if not stream_id:
        return web.json_response({"detail": "no stream id"}, status=400)
    item = {
        "kind": kind,
        "stream_id": stream_id,
        "container_id": body.get("container_id"),
        "reason": body.get("reason"),
        "received": time.time(),
        "request_id": request.headers.get("X-Request-ID"),
    }
    mock.events.append(item)
    mock.log(
        "streams",
        request.headers.get("X-Request-ID") or stream_id,
        event=f"stream_{kind}",
        container_id=body.get("container_id"),
        reason=body.get("reason"),
    )
    return web.json_response({"updated": True, "stream": item})


async def mock_events(request: web.Request) -> web.Response:
    return web.json_response(request.app[ORCHESTRATOR].events)


async def mock_stats(request: web.Request) -> web.Response:
    mock = request.app[ORCHESTRATOR]
    return web.json_response(
        {
            **mock.counts,
            "engines": {
                e.id: {"port": e.port, "pid": e.process.pid} for e in mock.engines.values()
            },
            "faults": asdict(mock.faults),
        }
    )


async def mock_faults(request: web.Request) -> web.Response:
    mock = request.app[ORCHESTRATOR]
    if request.method == "POST":
        try:
            changes = await request.json()
            if not isinstance(changes, dict):
                raise ValueError("send a JSON object of faults")
            mock.faults = mock.faults.updated(changes)
        except (ValueError, TypeError) as exc:
            return web.json_response({"detail": str(exc)}, status=400)
    return web.json_response(asdict(mock.faults))


async def health(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok", "engines": len(request.app[ORCHESTRATOR].engines)})


def build_orchestrator_app(mock: OrchestratorMock) -> web.Application:
    app = web.Application()
    app[ORCHESTRATOR] = mock
    app.router.add_post("/provision/acestream", provision)
    app.router.add_post("/provision", provision)
    app.router.add_delete("/containers/{id}", release)
    app.router.add_get("/engines", engines)
    app.router.add_get("/orchestrator/status", status)
    app.router.add_post("/events/stream_{kind:started|ended}", stream_event)
    app.router.add_get("/mock/events", mock_events)
    app.router.add_get("/mock/stats", mock_stats)
    app.router.add_route("*", "/mock/faults", mock_faults)
    app.router.add_get("/health", health)

    async def cleanup(app: web.Application) -> None:
        await app[ORCHESTRATOR].stop_all()

    app.on_cleanup.append(cleanup)
    return app


async def serve_orchestrator(host: str, port: int, mock: OrchestratorMock) -> None:
    """Serve until SIGTERM or SIGINT; the first line printed is the base URL."""
    stop = stop_event()
    runner = web.AppRunner(build_orchestrator_app(mock), access_log=None, handle_signals=False)
    bound = await start_site(runner, host, port)
    if mock.debug is not None:
        mock.debug.start(component="mock-orchestrator", port=bound)
    shown = f"[{host}]" if ":" in host else host
    print(f"mock orchestrator listening on http://{shown}:{bound}", flush=True)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()
        if mock.debug is not None:
            mock.debug.stop()


def parse_fault(text: str) -> dict[str, Any]:
    """``slow=2``, ``blocked=30``, ``breaker=60``, ``degraded``, ``fail=3``, ``refuse``."""
    name, _, value = text.partition("=")
    name = name.strip()
    if name in ("degraded", "refuse"):
        if value and value.lower() not in ("1", "true", "yes", "on"):
            return {name: False}
        return {name: True}
    if name in ("slow", "blocked", "breaker", "fail"):
        if not value:
            raise ValueError(f"--fault {name} needs a value, e.g. {name}=5")
        try:
            number: float | int = int(value) if name == "fail" else float(value)
        except ValueError:
            raise ValueError(f"--fault {name}: {value!r} is not a number") from None
        return {name: number}
    raise ValueError(
        f"unknown fault {name!r}: use slow=S, blocked=ETA, breaker=ETA, degraded, fail=N, refuse"
    )
