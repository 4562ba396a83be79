"""Stream events for the orchestrator: started before the first byte, ended exactly once.

``started`` is sent before the client gets its first byte, and awaited for at most
``event_timeout`` (the request goes on when it takes longer; the report is not cut short).
``ended`` follows in the background, once per stream whatever calls it how often, with the
reason (:data:`END_REASONS`), and only after the orchestrator accepted the start: it names the
stream by the id the orchestrator answered. A start that was refused or failed is never ended
(the acestream-orchestrator ends the latest open stream of the engine when it is sent an id it
does not know). A request that fails over to another backend after its stream started ends
that stream (``upstream_error``) before the next one starts. A failed report is logged with the
orchestrator's reason and never fails the request.

The start's body is one both versions of the orchestrator's models accept (v1.6.1 knows four
key types and wants ``stat_url`` and ``command_url``; v2.0 knows seven): the key is the
backend's URL and the request id (``url``), so that no two streams share one (the orchestrator
ends every open stream of a key together); both URLs are the backend's.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import urlsplit

from proxyfleet.debuglog.recorder import DebugRecorder
from proxyfleet.errors import ProvisionerError
from proxyfleet.logs import event
from proxyfleet.orchestrator.provisioner import Provisioner
from proxyfleet.pool import BackendSpec

__all__ = ["END_REASONS", "StreamEvents", "started_payload"]

_log = logging.getLogger("proxyfleet.orchestrator.events")
T = TypeVar("T")

#: Every reason a ``stream_ended`` can carry: how the response ended (the gateway's recording),
#: or that the gateway stopped with the stream still open.
END_REASONS = (
    "completed",
    "client_disconnected",
    "upstream_error",
    "timeout",
    "cancelled",
    "gateway_shutdown",
)


def started_payload(rid: str, backend: BackendSpec) -> dict[str, Any]:
    """The ``stream_started`` body for request ``rid`` on ``backend``."""
    parts = urlsplit(backend.base_url)
    try:
        port = parts.port
    except ValueError:
        port = None
    return {
        "container_id": backend.id,
        "engine": {
            "host": parts.hostname or "",
            "port": port or (443 if parts.scheme == "https" else 80),
        },
        "stream": {"key_type": "url", "key": f"{backend.base_url}#{rid}"},
        "session": {
            "playback_session_id": rid,
            "stat_url": backend.base_url,
            "command_url": backend.base_url,
            "is_live": 0,
        },
        "labels": {"stream_id": rid, "proxy": "proxyfleet"},
    }


@dataclass(slots=True)
class _Stream:
    backend: BackendSpec
    since: float  # perf_counter
    start: asyncio.Task[str | None]  # the id the orchestrator gave it; None: refused or failed


class StreamEvents:
    def __init__(
        self, provisioner: Provisioner, timeout: float, debug: DebugRecorder | None = None
    ) -> None:
        self._provisioner = provisioner
        self._timeout = timeout
        self._debug = debug
        self._open: dict[str, _Stream] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self.sent = {"started": 0, "ended": 0, "failed": 0}

    async def started(self, rid: str, backend: BackendSpec) -> None:
        """Report the stream of ``rid`` on ``backend``; wait for it at most ``timeout``."""
        current = self._open.get(rid)
        if current is not None:
            if current.backend.id == backend.id:
                return
            # it failed over after the first backend's head: that stream is over
            await self._wait(self.ended(rid, "upstream_error"))
        start = self._spawn(self._start(rid, backend))
        self._open[rid] = _Stream(backend, time.perf_counter(), start)
        await self._wait(start)

    def ended(self, rid: str, reason: str) -> asyncio.Task[None] | None:
        """Report the end in the background; only the first call for a stream counts."""
        stream = self._open.pop(rid, None)
        if stream is None:
            return None
        return self._spawn(self._end(rid, stream, reason))

    async def close(self) -> None:
        """End what is still open (the gateway is stopping) and wait for the reports (at most
        ``timeout``; what is still pending then is given up)."""
        for rid in list(self._open):
            self.ended(rid, "gateway_shutdown")
        if self._tasks:
            _, pending = await asyncio.wait(list(self._tasks), timeout=self._timeout)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    # -- the reports -------------------------------------------------------------------------
    def _spawn(self, coro: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _wait(self, task: asyncio.Task[Any] | None) -> None:
        if task is not None:
            await asyncio.wait({task}, timeout=self._timeout)  # it goes on if it takes longer

    async def _start(self, rid: str, backend: BackendSpec) -> str | None:
        payload = started_payload(rid, backend)
        answer = await self._send("started", rid, backend, payload)
        if answer is None:
            return None
        ident = answer.get("id") if isinstance(answer, dict) else None
        return ident if isinstance(ident, str) and ident else rid  # its id is our label

    async def _end(self, rid: str, stream: _Stream, reason: str) -> None:
        stream_id = await stream.start
        if stream_id is None:
            return  # never started there: an end would end someone else's stream
        payload = {
            "container_id": stream.backend.id,
            "stream_id": stream_id,
            "reason": reason,
            "duration_ms": round((time.perf_counter() - stream.since) * 1000, 3),
        }
        await self._send("ended", rid, stream.backend, payload)

    async def _send(
        self, kind: str, rid: str, backend: BackendSpec, payload: dict[str, Any]
    ) -> object | None:
        """The orchestrator's answer (``{}`` when it had no body), or None when it failed."""
        started = time.perf_counter()
        try:
            answer = await self._provisioner.stream_event(kind, payload, rid)
        except ProvisionerError as exc:
            self.sent["failed"] += 1
            event(
                _log,
                "stream_event_failed",
                logging.WARNING,
                request_id=rid,
                kind=kind,
                code=exc.code,
                error=exc.message,
            )
            if self._debug is not None:
                self._debug.error(rid, "stream_events", f"report_stream_{kind}", exc)
            return None
        self.sent[kind] += 1
        if self._debug is not None:
            self._debug.stream(
                rid,
                f"reported_{kind}",
                backend.id,
                report_ms=round((time.perf_counter() - started) * 1000, 3),
                reason=payload.get("reason"),
            )
        return {} if answer is None else answer
