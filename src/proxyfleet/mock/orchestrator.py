"""A mock orchestrator: the acestream-orchestrator API, provisioning mock upstreams.

``POST /provision/acestream`` starts ``proxyfleet mock`` on a free port (a real process) and
answers ``{"container_id", "host_http_port", ...}``; ``DELETE /containers/{id}`` stops it;
``GET /engines`` lists them; ``GET /orchestrator/status`` reports health and whether it can
provision; ``POST /events/stream_started|stream_ended`` are kept (``GET /mock/events``). Faults
(``--fault``, ``POST /mock/faults``): ``slow`` seconds per provisioning, ``blocked`` (VPN down)
and ``breaker`` (its breaker open) with an ETA, ``degraded``, ``fail`` (the next N fail with
500; -1 = all), ``refuse`` (a failure not to retry), ``reject_events`` (stream starts get 422).

It refuses what the real one (v1.6.1 and v2.0: FastAPI, pydantic) refuses, the same way: no
bearer key 401 ``missing bearer token``, a wrong one 403 ``invalid token``, an event its models
refuse 422 with FastAPI's ``detail`` list (the stricter version's: four key types, ``stat_url``
and ``command_url`` required); and answers as it does: a stream start with the stream's state
(``id`` = ``labels.stream_id``); a stream end naming no known id ends the container's latest
open stream, and an end ends every open stream sharing the key. Engines stop with the mock.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import itertools
import json
import os
import re
import signal
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal

from aiohttp import web
from pydantic import BaseModel, HttpUrl, ValidationError

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
    refuse: bool = False  # provisioning fails, not retryable
    reject_events: bool = False  # every stream start is refused with a 422

    def updated(self, changes: dict[str, Any]) -> Faults:
        check_fields(self, changes, "fault")
        for name in ("slow", "blocked", "breaker"):
            value = changes.get(name)
            if value is not None and (not isinstance(value, int | float) or value < 0):
                raise ValueError(f"{name} must be a number of seconds >= 0")
        if "fail" in changes and not isinstance(changes["fail"], int):
            raise ValueError("fail must be an integer (-1 = every provisioning)")
        return replace(self, **changes)


# The real orchestrator's event models: what both v1.6.1 and v2.0 accept (v2.0 knows three more
# key types and makes the URLs optional; v1.6.1 wants both URLs and accepts these four only).
class _EngineAddress(BaseModel):
    host: str
    port: int


class _StreamKey(BaseModel):
    key_type: Literal["content_id", "infohash", "url", "magnet"]
    key: str


class _SessionInfo(BaseModel):
    playback_session_id: str
    stat_url: HttpUrl
    command_url: HttpUrl
    is_live: int


class _StreamStartedEvent(BaseModel):
    container_id: str | None = None
    engine: _EngineAddress
    stream: _StreamKey
    session: _SessionInfo
    labels: dict[str, str] = {}


class _StreamEndedEvent(BaseModel):
    container_id: str | None = None
    stream_id: str | None = None
    reason: str | None = None


_KEY_TYPE = ["body", "stream", "key_type"]


def _invalid(detail: list[dict[str, Any]]) -> web.Response:
    """FastAPI's answer to a body its model refuses."""
    return web.json_response({"detail": detail}, status=422)


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
        self.streams: dict[str, dict[str, Any]] = {}  # open streams, oldest first
        self.events: list[dict[str, Any]] = []
        self.counts = {
            "provision_requests": 0,
            "provisioned": 0,
            "failed": 0,
            "released": 0,
            "unauthorized": 0,
            "status_requests": 0,
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
    def _block(self) -> tuple[str, float] | None:
        """What blocks provisioning (its VPN down, its own breaker open), with the ETA."""
        if self.faults.blocked is not None:
            return "vpn_disconnected", self.faults.blocked
        if self.faults.breaker is not None:
            return "circuit_breaker", self.faults.breaker
        return None

    def status(self) -> dict[str, Any]:
        block, full = self._block(), len(self.engines) >= self.max_engines
        reason, details = None, None
        if block is not None:
            code, eta = block
            reason, message, can_retry = _BLOCKS[code]
            details = _details(code, message, eta, can_retry, should_wait=True)
        elif full:
            reason = "Maximum capacity reached"
            message = f"Maximum number of engines ({self.max_engines}) already running"
            details = _details("max_capacity", message, None, False, should_wait=True)
        if not self.engines:
            overall = "unavailable"  # as there: unavailable means no engine is running
        elif block is not None or self.faults.degraded:
            overall = "degraded"
        else:
            overall = "healthy"
        return {
            "status": overall,
            "provisioning": {
                "can_provision": details is None,
                "blocked_reason": reason,
                "blocked_reason_details": details,  # no "error" here, unlike a refusal
            },
            "engines": {"total": len(self.engines)},
            "streams": {"active": self.active_streams()},
            "capacity": {
                "total": self.max_engines,
                "used": min(len(self.engines), self.max_engines),
                "available": max(0, self.max_engines - len(self.engines)),
            },
        }

    def refusal(self) -> tuple[int, dict[str, Any]] | None:
        """What a provisioning call is answered instead of an engine, if anything: the real
        one's refusals while blocked (503) and its general failure (500, not to be retried;
        it has no 400 refusal and no capacity check of its own)."""
        block = self._block()
        if block is not None:
            code, eta = block
            _, message, can_retry = _BLOCKS[code]
            details = _details(code, message, eta, can_retry, should_wait=True)
            return 503, {"error": "provisioning_blocked", **details}
        if self.faults.refuse or len(self.engines) >= self.max_engines:
            why = (
                "engine image is not configured"
                if self.faults.refuse
                else f"maximum number of engines ({self.max_engines}) reached"
            )
            message = f"Failed to provision engine: {why}"
            details = _details("general_error", message, None, False, should_wait=False)
            return 500, {"error": "provisioning_failed", **details}
        return None

    def active_streams(self) -> int:
        return len(self.streams)

    # -- streams, as the real one keeps them --------------------------------------------------
    def start_stream(self, body: object) -> dict[str, Any]:
        """A stream start the real models accept (else ValidationError): its state."""
        evt = _StreamStartedEvent.model_validate(body)
        engine = next((e for e in self.engines.values() if e.port == evt.engine.port), None)
        container = evt.container_id or (
            engine.id if engine else f"{evt.engine.host}:{evt.engine.port}"
        )
        key, session = evt.stream.key, evt.session
        stream_id = evt.labels.get("stream_id") or f"{key}|{session.playback_session_id}"
        state = {
            "id": stream_id,
            **evt.stream.model_dump(),
            "container_id": container,
            **session.model_dump(mode="json"),
            "is_live": bool(session.is_live),
            "started_at": time.time(),
            "ended_at": None,
            "status": "started",
        }
        self.streams.pop(stream_id, None)
        self.streams[stream_id] = state
        return state

    def end_stream(self, body: object) -> list[dict[str, Any]]:
        """A stream end (else ValidationError): the streams it ended, the one it names (or,
        as there, the latest open one of the container) first, then those sharing its key."""
        evt = _StreamEndedEvent.model_validate(body)
        state = self.streams.get(evt.stream_id or "")
        if state is None:
            state = next(
                (
                    s
                    for s in reversed(self.streams.values())
                    if s["container_id"] == (evt.container_id or s["container_id"])
                ),
                None,
            )
        if state is None:
            return []
        ended = [
            state,
            *(s for s in self.streams.values() if s is not state and s["key"] == state["key"]),
        ]
        for stream in ended:
            del self.streams[stream["id"]]
            stream.update(ended_at=time.time(), status="ended")
        return ended

    def log(self, category: str, rid: str | None, **values: Any) -> None:
        if self.debug is not None:
            self.debug.log(category, rid, **values)


# code: (blocked_reason, message, can_retry), as the real one says them while it is blocked
_BLOCKS = {
    "vpn_disconnected": (
        "VPN not connected",
        "VPN connection is required but currently disconnected",
        True,
    ),
    # can_retry is true only while its breaker is half-open
    "circuit_breaker": (
        "Circuit breaker is open",
        "Circuit breaker is open due to repeated failures",
        False,
    ),
}


def _details(
    code: str, message: str, eta: float | None, can_retry: bool, *, should_wait: bool
) -> dict[str, Any]:
    return {
        "code": code,
        "message": message,
        "recovery_eta_seconds": eta,
        "can_retry": can_retry,
        "should_wait": should_wait,
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


def _unauthorized(request: web.Request) -> web.Response | None:
    """The real one's refusal of a call without the key (401) or with a wrong one (403)."""
    mock = request.app[ORCHESTRATOR]
    if mock.api_key is None:
        return None
    given = request.headers.get("Authorization", "")
    if not given.startswith("Bearer "):
        mock.counts["unauthorized"] += 1
        return web.json_response({"detail": "missing bearer token"}, status=401)
    if hmac.compare_digest(given.split(" ", 1)[1].encode(), mock.api_key.encode()):
        return None
    mock.counts["unauthorized"] += 1
    return web.json_response({"detail": "invalid token"}, status=403)


async def provision(request: web.Request) -> web.Response:
    mock = request.app[ORCHESTRATOR]
    if (refused := _unauthorized(request)) is not None:
        return refused
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

    refusal = mock.refusal()
    if refusal is not None:
        status, detail = refusal
        return failed(status, {"detail": detail}, "refused" if faults.refuse else detail["code"])
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
    if (refused := _unauthorized(request)) is not None:
        return refused
    engine_id = request.match_info["id"]
    if await mock.stop_engine(engine_id):
        mock.counts["released"] += 1
        mock.log("provisioning", None, operation="engine_deleted", container_id=engine_id)
    return web.json_response({"deleted": engine_id})  # as there: 200, known or not


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
    mock.counts["status_requests"] += 1
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
    if (refused := _unauthorized(request)) is not None:
        return refused
    kind = request.match_info["kind"]
    text = await request.text()
    try:
        body = json.loads(text)
    except ValueError as exc:
        error = {"type": "json_invalid", "loc": ["body", 0], "msg": "JSON decode error"}
        return _invalid([dict(error, input={}, ctx={"error": str(exc)})])
    try:
        if kind == "started":
            if mock.faults.reject_events:
                why = "Value error, refused by the mock orchestrator (fault reject_events)"
                return _invalid([{"type": "value_error", "loc": _KEY_TYPE, "msg": why}])
            streams = [mock.start_stream(body)]
        else:
            streams = mock.end_stream(body)
    except ValidationError as exc:
        errors = json.loads(exc.json(include_url=False))
        return _invalid([dict(e, loc=["body", *e["loc"]]) for e in errors])
    rid = request.headers.get("X-Request-ID")
    reason = body.get("reason") if kind == "ended" else None
    for stream in streams:
        sid, container = stream["id"], stream["container_id"]
        mock.events.append(
            dict(kind=kind, stream_id=sid, container_id=container, key=stream["key"])
            | dict(reason=reason, received=time.time(), request_id=rid)
        )
        mock.log(
            "streams", rid or sid, event=f"stream_{kind}", container_id=container, reason=reason
        )
    if kind == "started":
        return web.json_response(streams[0])
    return web.json_response({"updated": bool(streams), "stream": streams[0] if streams else None})


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
    """``slow=2``, ``blocked=30``, ``breaker=60``, ``degraded``, ``fail=3``, ``refuse``,
    ``reject_events``."""
    name, _, value = text.partition("=")
    name = name.strip()
    if name in ("degraded", "refuse", "reject_events"):
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
        f"unknown fault {name!r}: use slow=S, blocked=ETA, breaker=ETA, degraded, fail=N, "
        "refuse, reject_events"
    )
