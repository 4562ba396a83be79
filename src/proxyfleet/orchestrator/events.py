"""Stream events for the orchestrator: started before the first byte, ended exactly once.

``started`` is awaited (bounded by ``event_timeout``) so the orchestrator hears of a stream
before the client gets its first byte; ``ended`` is sent in the background, once per stream
whatever calls it how often, with the reason (completed, client_disconnected, upstream_error,
timeout, gateway_shutdown). A failed report is logged and never fails the request.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any
from urllib.parse import urlsplit

from proxyfleet.debuglog.recorder import DebugRecorder
from proxyfleet.errors import ProvisionerError
from proxyfleet.logs import event
from proxyfleet.orchestrator.provisioner import Provisioner
from proxyfleet.pool import BackendSpec

__all__ = ["StreamEvents"]

_log = logging.getLogger("proxyfleet.orchestrator.events")


class StreamEvents:
    def __init__(
        self, provisioner: Provisioner, timeout: float, debug: DebugRecorder | None = None
    ) -> None:
        self._provisioner = provisioner
        self._timeout = timeout
        self._debug = debug
        self._open: dict[str, tuple[BackendSpec, float]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.sent = {"started": 0, "ended": 0, "failed": 0}

    async def started(self, rid: str, backend: BackendSpec) -> None:
        if rid in self._open:
            return
        self._open[rid] = (backend, time.perf_counter())
        parts = urlsplit(backend.base_url)
        payload = {
            "container_id": backend.id,
            "engine": {"host": parts.hostname, "port": parts.port},
            "stream": {"key_type": "request_id", "key": rid},
            "session": {"playback_session_id": rid, "is_live": 0},
            "labels": {"stream_id": rid, "proxy": "proxyfleet"},
        }
        await self._send("started", rid, backend, payload)

    def ended(self, rid: str, reason: str) -> None:
        """Report the end in the background; only the first call for a stream counts."""
        entry = self._open.pop(rid, None)
        if entry is None:
            return
        backend, since = entry
        payload = {
            "container_id": backend.id,
            "stream_id": rid,
            "reason": reason,
            "duration_ms": round((time.perf_counter() - since) * 1000, 3),
        }
        task = asyncio.ensure_future(self._send("ended", rid, backend, payload))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send(
        self, kind: str, rid: str, backend: BackendSpec, payload: dict[str, Any]
    ) -> None:
        started = time.perf_counter()
        try:
            async with asyncio.timeout(self._timeout):
                await self._provisioner.stream_event(kind, payload, rid)
        except (ProvisionerError, TimeoutError) as exc:
            self.sent["failed"] += 1
            event(
                _log,
                "stream_event_failed",
                logging.WARNING,
                request_id=rid,
                kind=kind,
                error=getattr(exc, "message", None) or type(exc).__name__,
            )
            if self._debug is not None:
                self._debug.error(rid, "stream_events", f"report_stream_{kind}", exc)
            return
        self.sent[kind] += 1
        if self._debug is not None:
            self._debug.stream(
                rid,
                f"reported_{kind}",
                backend.id,
                report_ms=round((time.perf_counter() - started) * 1000, 3),
                reason=payload.get("reason"),
            )

    async def close(self) -> None:
        """End what is still open (the gateway is stopping) and wait for the reports."""
        for rid in list(self._open):
            self.ended(rid, "gateway_shutdown")
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=self._timeout)
