"""``proxyfleet mock``: an OpenAI-compatible upstream for demos, tests and benchmarks.

It serves chat completions and responses (JSON, SSE, and the WebSocket form of responses),
``/v1/models``, and echoes any other ``/v1`` path. Faults are injected from flags or at runtime
(``POST /mock/faults``). It counts requests, in-flight and peak concurrency per credential (a
short hash of the ``Authorization``, ``X-API-Key`` or ``Cookie`` value, never the secret itself)
and reports them at ``GET /mock/stats``.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from aiohttp import WSMsgType, web

from proxyfleet.debuglog.writer import DebugLog
from proxyfleet.mock.payloads import (
    chat_completion,
    chat_frames,
    response_events,
    response_object,
    sse,
)
from proxyfleet.mock.plan import Plan, plan_chat, plan_responses

__all__ = ["MOCK_STATE", "MockSettings", "MockStats", "build_mock_app", "credential_label"]


@dataclass(frozen=True)
class MockSettings:
    """Behaviour and faults. Times are seconds."""

    latency: float = 0.0  # delay before a non-streamed answer; between stream chunks
    ttft: float = 0.0  # delay before the first streamed chunk
    chunks: int = 8
    chunk_size: int = 8
    fail_rate: float = 0.0  # fraction of requests answered with fail_status
    fail_status: int = 500
    hang: bool = False  # accept the request and never answer
    drop_after: int | None = None  # close the connection after this many stream chunks
    models: tuple[str, ...] = ("mock-gpt", "mock-gpt-mini")
    chat_only: bool = False  # answer /v1/responses with 404, like a Chat-Completions provider
    name: str = "mock"  # reported in answers, to tell mocks apart
    deterministic: bool = False  # ids from a digest of the request, timestamps 0

    def updated(self, changes: dict[str, Any]) -> MockSettings:
        check_fields(self, changes, "fault setting")
        if "models" in changes:
            changes = dict(changes, models=tuple(changes["models"]))
        return replace(self, **changes)


def check_fields(settings: Any, changes: dict[str, Any], what: str) -> None:
    """Refuse changes naming fields the settings dataclass does not have."""
    unknown = sorted(set(changes) - {f.name for f in fields(settings)})
    if unknown:
        raise ValueError(f"unknown {what}(s): {', '.join(unknown)}")


@dataclass
class _Counter:
    requests: int = 0
    inflight: int = 0
    peak: int = 0


@dataclass
class MockStats:
    credentials: dict[str, _Counter] = field(default_factory=dict)
    requests: int = 0
    inflight: int = 0
    peak: int = 0
    recent: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=200))

    def as_json(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "inflight": self.inflight,
            "peak": self.peak,
            "credentials": {k: asdict(v) for k, v in self.credentials.items()},
            "recent": list(self.recent),
        }


@dataclass
class MockState:
    settings: MockSettings
    stats: MockStats = field(default_factory=MockStats)
    debug: DebugLog | None = None  # the mock's own debug log, to correlate with the gateway's


MOCK_STATE = web.AppKey("mock_state", MockState)


def credential_label(value: str) -> str:
    """How the mock names a credential: a short hash, so secrets never show in its output."""
    return "cred-" + hashlib.sha256(value.encode()).hexdigest()[:10]


def _credential(request: web.Request) -> str:
    for name in ("Authorization", "X-API-Key", "Cookie"):
        value = request.headers.get(name)
        if value:
            return credential_label(value)
    return "anonymous"


class _Tracked:
    """Counts one request in-flight for its credential while the ``with`` block runs."""

    def __init__(self, state: MockState, request: web.Request) -> None:
        self.stats = state.stats
        self.debug = state.debug
        self.request = request
        self.started = time.monotonic()
        self.label = _credential(request)
        self.stats.recent.append(
            {
                "method": request.method,
                "path": request.path_qs,
                "credential": self.label,
                "request_id": request.headers.get("X-Request-ID"),
                "headers": sorted(h.lower() for h in request.headers),
            }
        )

    def __enter__(self) -> str:
        stats = self.stats
        counter = stats.credentials.setdefault(self.label, _Counter())
        counter.requests += 1
        counter.inflight += 1
        counter.peak = max(counter.peak, counter.inflight)
        stats.requests += 1
        stats.inflight += 1
        stats.peak = max(stats.peak, stats.inflight)
        return self.label

    def __exit__(self, *exc: object) -> None:
        self.stats.credentials[self.label].inflight -= 1
        self.stats.inflight -= 1
        if self.debug is not None:
            request = self.request
            self.debug.log(
                "requests",
                request.headers.get("X-Request-ID"),
                method=request.method,
                path=request.path,
                credential=self.label,
                duration_ms=round((time.monotonic() - self.started) * 1000, 3),
            )


def _error(status: int, message: str, code: str) -> web.Response:
    kind = "invalid_request_error" if status < 500 else "server_error"
    return web.json_response(
        {"error": {"message": message, "type": kind, "code": code}}, status=status
    )


async def _body(request: web.Request) -> dict[str, Any]:
    try:
        data = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise web.HTTPBadRequest(
            text=json.dumps(
                {
                    "error": {
                        "message": "invalid JSON",
                        "type": "invalid_request_error",
                        "code": "invalid_json",
                    }
                }
            ),
            content_type="application/json",
        ) from exc
    if not isinstance(data, dict):
        raise web.HTTPBadRequest(text="body must be a JSON object")
    return data


async def _fault(request: web.Request, settings: MockSettings) -> web.Response | None:
    if settings.hang:  # no answer, ever; the request ends when its client goes (or we stop)
        while request.transport is not None and not request.transport.is_closing():  # noqa: ASYNC110
            await asyncio.sleep(0.05)  # aiohttp has no event for a peer that went away
        return web.Response(status=499, text="the client went away")  # nobody reads it
    if settings.fail_rate and random.random() < settings.fail_rate:
        return _error(settings.fail_status, "injected failure", "mock_failure")
    return None


async def _stream(
    request: web.Request, settings: MockSettings, frames: list[bytes]
) -> web.StreamResponse:
    response = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
    )
    await response.prepare(request)
    try:
        if settings.ttft:
            await asyncio.sleep(settings.ttft)
        for n, frame in enumerate(frames):
            if settings.drop_after is not None and n >= settings.drop_after:
                assert request.transport is not None
                request.transport.abort()
                return response
            if n and settings.latency:
                await asyncio.sleep(settings.latency)
            await response.write(frame)
        await response.write_eof()
    except ConnectionResetError:  # the client went away mid-stream: a normal event here
        pass
    return response


Planner = Callable[[dict[str, Any], int, int], Plan]
Answer = Callable[[str, Plan, str, str | None], dict[str, Any]]
Frames = Callable[[str, Plan, dict[str, Any], str | None], list[bytes]]


def _seed(request: web.Request, body: dict[str, Any], label: str) -> str:
    """What a deterministic answer's ids are made from: the path, the body, the credential."""
    return f"{request.path}|{json.dumps(body, sort_keys=True)}|{label}"


async def _generate(
    request: web.Request, planner: Planner, answer: Answer, frames: Frames
) -> web.StreamResponse:
    """One generation: faults first, then a JSON answer or an SSE stream of ``frames``."""
    state = request.app[MOCK_STATE]
    settings = state.settings
    with _Tracked(state, request) as label:
        body = await _body(request)
        state.stats.recent[-1]["model"] = body.get("model")
        failed = await _fault(request, settings)
        if failed is not None:
            return failed
        model = str(body.get("model") or settings.models[0])
        try:
            plan = planner(body, settings.chunks, settings.chunk_size)
        except (KeyError, IndexError, TypeError, AttributeError, ValueError) as exc:
            # a real provider refuses what it cannot read: so does the mock
            return _error(400, f"the mock cannot read this request: {exc!r}", "invalid_request")
        seed = _seed(request, body, label) if settings.deterministic else None
        if not body.get("stream"):
            if settings.latency:
                await asyncio.sleep(settings.latency)
            return web.json_response(answer(model, plan, label, seed))
        return await _stream(request, settings, frames(model, plan, body, seed))


def _include_usage(body: dict[str, Any]) -> bool:
    options = body.get("stream_options")
    return isinstance(options, dict) and options.get("include_usage") is True


async def chat_completions(request: web.Request) -> web.StreamResponse:
    return await _generate(
        request,
        plan_chat,
        chat_completion,
        lambda model, plan, body, seed: chat_frames(model, plan, _include_usage(body), seed),
    )


async def responses(request: web.Request) -> web.StreamResponse:
    if request.app[MOCK_STATE].settings.chat_only:
        return _error(404, "this provider only speaks /v1/chat/completions", "not_found")
    return await _generate(
        request,
        plan_responses,
        lambda model, plan, _, seed: response_object(model, plan, seed=seed),
        lambda model, plan, _, seed: [
            sse(e, e["type"]) for e in response_events(model, plan, seed)
        ],
    )


async def responses_websocket(request: web.Request) -> web.StreamResponse:
    """The WebSocket form: ``response.create`` frames in, one event per frame out."""
    state = request.app[MOCK_STATE]
    ws = web.WebSocketResponse()
    await ws.prepare(request)
    with _Tracked(state, request):
        async for message in ws:
            if message.type is not WSMsgType.TEXT:
                continue
            try:
                frame = json.loads(message.data)
            except json.JSONDecodeError:
                await ws.send_json(
                    {
                        "type": "error",
                        "error": {
                            "message": "invalid JSON",
                            "type": "invalid_request_error",
                            "code": "invalid_json",
                        },
                    }
                )
                continue
            if frame.get("type") != "response.create":
                await ws.send_json(
                    {
                        "type": "error",
                        "error": {
                            "message": "expected a response.create frame",
                            "type": "invalid_request_error",
                            "code": "unknown_event",
                        },
                    }
                )
                continue
            settings = state.settings
            model = str(frame.get("model") or settings.models[0])
            plan = plan_responses(frame, settings.chunks, settings.chunk_size)
            for event in response_events(model, plan):
                if settings.latency:
                    await asyncio.sleep(settings.latency)
                await ws.send_json(event)
    return ws


async def models(request: web.Request) -> web.Response:
    state = request.app[MOCK_STATE]
    settings = state.settings
    with _Tracked(state, request):
        data = [
            {"id": m, "object": "model", "created": 0, "owned_by": settings.name}
            for m in settings.models
        ]
        return web.json_response({"object": "list", "data": data})


async def echo(request: web.Request) -> web.Response:
    state = request.app[MOCK_STATE]
    with _Tracked(state, request):
        body = await request.read()
        return web.json_response(
            {
                "method": request.method,
                "path": request.path,
                "query": request.query_string,
                "body_bytes": len(body),
                "mock": state.settings.name,
            }
        )


async def stats(request: web.Request) -> web.Response:
    return web.json_response(request.app[MOCK_STATE].stats.as_json())


async def reset(request: web.Request) -> web.Response:
    request.app[MOCK_STATE].stats = MockStats()
    return web.json_response({"ok": True})


async def faults(request: web.Request) -> web.Response:
    state = request.app[MOCK_STATE]
    if request.method == "POST":
        try:
            state.settings = state.settings.updated(await request.json())
        except (ValueError, TypeError) as exc:
            return _error(400, str(exc), "invalid_fault")
    return web.json_response(asdict(state.settings))


async def health(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok", "name": request.app[MOCK_STATE].settings.name})


def build_mock_app(
    settings: MockSettings | None = None, debug: DebugLog | None = None
) -> web.Application:
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app[MOCK_STATE] = MockState(settings or MockSettings(), debug=debug)
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_post("/v1/responses", responses)
    app.router.add_get("/v1/responses", responses_websocket)
    app.router.add_get("/v1/models", models)
    app.router.add_get("/mock/stats", stats)
    app.router.add_post("/mock/reset", reset)
    app.router.add_route("*", "/mock/faults", faults)
    app.router.add_get("/health", health)
    app.router.add_route("*", "/v1/{tail:.*}", echo)
    return app
