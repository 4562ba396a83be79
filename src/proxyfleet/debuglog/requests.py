"""Debug mode's record of each request: one call when it finished, one per lease worth noting.

The gateway calls :meth:`RequestLog.finished` once per finished request and
:meth:`RequestLog.selected` for a lease that waited, failed over or serves no request row (a
WebSocket's). Rows are tuples laid out as :mod:`proxyfleet.debuglog.columns` says; ordinary
requests are sampled under extreme load (see :class:`~proxyfleet.debuglog.recorder.DebugRecorder`),
so an unrecorded one costs a few comparisons and a counter.
"""

from __future__ import annotations

import time
from typing import Protocol

from proxyfleet.debuglog.columns import Selection
from proxyfleet.debuglog.recorder import DebugRecorder

__all__ = ["RequestLog", "Served"]


class Served(Protocol):
    """What the gateway knows of a finished request (its response recording)."""

    rid: str
    started: float
    status: int
    backend: str | None
    bytes: int
    first_byte: float
    sse: bool
    gone: bool
    selection: Selection | None

    @property
    def shown_status(self) -> int: ...

    def lease(self, candidates: int) -> Selection | None: ...

    def end_reason(self) -> str: ...


class RequestLog:
    """The ``requests``, ``engine_selection``, ``streams`` and ``disconnects`` lines of requests."""

    def __init__(self, recorder: DebugRecorder) -> None:
        self.recorder = recorder

    def finished(
        self, method: str, path: str, served: Served, elapsed: float, candidates: int
    ) -> None:
        debug = self.recorder
        if (  # an ordinary request: sampled under extreme load
            0 < served.status < 400
            and elapsed <= debug.fast
            and not served.gone
            and (served.selection is None or not served.selection[4])
        ):
            weight = debug.unrecorded + 1
            if weight < debug.every:  # not recorded: all it costs is this count
                debug.unrecorded = weight
                if served.sse:
                    self._events(served, elapsed)
                return
            debug.unrecorded = 0
        else:
            weight = 1
        rows = debug.requests
        rows.append(
            (
                served.rid,
                method,
                path,
                served.backend,
                served.shown_status,
                served.started,
                elapsed,
                served.bytes,
                served.first_byte,
                served.lease(candidates),
                weight,
            )
        )
        if len(rows) >= debug.burst:  # a burst: sampling may have to start now
            debug.resample()
        if elapsed > debug.slow_request or served.sse or served.gone:
            self._events(served, elapsed)

    def _events(self, served: Served, elapsed: float) -> None:
        """What a slow, streamed or abandoned request records besides its row."""
        debug = self.recorder
        if elapsed > debug.slow_request:
            debug.slow(served.rid, elapsed)
        if served.sse:
            debug.stream(
                served.rid,
                "ended",
                served.backend,
                reason=served.end_reason(),
                duration_ms=round(elapsed * 1000, 3),
                bytes=served.bytes,
            )
        if served.gone:
            debug.disconnect(
                served.rid,
                "streaming" if served.first_byte else "waiting",
                elapsed,
                served.backend,
            )

    def stream_started(self, served: Served) -> None:
        self.recorder.stream(served.rid, "started", served.backend)

    def selected(
        self,
        rid: str,
        backend: str,
        wait: float,
        waiting: int,
        candidates: int,
        tried: int,
        served: Served | None,
    ) -> None:
        """A lease that waited, failed over or serves no request row: its whole selection now,
        and a stress check on the wait and the queue."""
        debug = self.recorder
        selection = (time.perf_counter(), wait, waiting, candidates, tried)
        if served is None:  # not tied to a request's row: a row of its own
            debug.selections.append((rid, backend, selection))
        else:  # goes out with the request's row; an earlier attempt's gets its own now
            earlier = served.lease(candidates)
            if earlier is not None:
                debug.selections.append((rid, served.backend, earlier))
            served.selection = selection
        if wait > debug.slow_selection or waiting >= debug.saturated:
            debug.pressure(rid, wait, waiting)
