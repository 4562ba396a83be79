"""What the gateway records in debug mode, category by category, with stress detection.

The gateway holds a recorder only when debug mode is on, so with it off every hook costs one
``is None`` check.
"""

from __future__ import annotations

import math
import time
from typing import Any

from proxyfleet.config.model import DebugConfig
from proxyfleet.debuglog.stress import StressDetector, StressEvent, Thresholds
from proxyfleet.debuglog.writer import DebugLog

__all__ = ["DebugRecorder"]


class DebugRecorder:
    """One method per thing worth recording, except for what every request records: its
    ``requests`` and ``engine_selection`` lines. For those the gateway appends one row per
    request itself to :attr:`requests` (a tuple, as :mod:`proxyfleet.debuglog.columns` lays it
    out; a lease that did not serve the answer goes to :attr:`selections`): no call, no
    formatting. It then compares against :attr:`slow_request`, :attr:`slow_selection` and
    :attr:`saturated` and calls :meth:`slow` or :meth:`pressure` when a stress event may be
    due.

    Sampling, for extreme load: an *ordinary* request (status below 400, done within
    :attr:`fast` seconds, served by its first attempt, client still there) counts itself in
    :attr:`unrecorded`, and gets a row only once that count reaches :attr:`every`; the row
    stands for that many requests (its weight) and the count starts again, so the weights add
    up to the ordinary requests exactly. Every other request always gets its row, of weight 1.
    :attr:`every` follows the rate of requests (``debug.sample_above`` per second are kept),
    recomputed at each flush from the weights of the rows and the count; it is 1, every
    request recorded, below that rate and when ``sample_above`` is 0. What a request costs
    in debug mode is the code it runs on the gateway's core, so an unrecorded one runs a
    counter and a few comparisons: no row, no tuple, no call."""

    def __init__(self, config: DebugConfig, queue_limit: int, strategy: str) -> None:
        self.log = DebugLog(
            config.dir,
            queue_limit=config.queue_limit,
            secret_fields=config.secret_fields,
            flush_interval=config.flush_interval,
            encoder_cpus=config.encoder_cpus,
            strategy=strategy,
            on_flush=self._resample if config.sample_above else None,
        )
        self.detector = StressDetector(
            Thresholds(
                slow_request=config.slow_request,
                slow_selection=config.slow_selection,
                slow_requests_per_window=config.slow_requests_per_window,
                provisioning_failures_per_window=config.provisioning_failures_per_window,
                queue_saturation=config.queue_saturation,
                window=config.stress_window,
            )
        )
        self.requests = self.log.requests
        self.selections = self.log.selections
        self.every = 1  # 1 in `every` ordinary requests gets a row
        self.unrecorded = 0  # ordinary requests since the last one that got a row
        self.fast = min(config.slow_request, config.slow_selection)
        self._sample_above = config.sample_above
        self._unrecorded = 0  # `unrecorded` at the last resample
        self._resampled = time.perf_counter()  # when
        # rows that make the gateway resample at once, not at the next flush: twice what a
        # flush interval holds at the sampled rate
        self.burst = 2 * config.sample_above * config.flush_interval or math.inf
        self._announced = 1  # the `every` the session file last announced
        self.slow_request = config.slow_request
        self.slow_selection = config.slow_selection
        self.saturated = config.queue_saturation * queue_limit if queue_limit else float("inf")
        self._queue_limit = queue_limit

    def start(self, **fields: Any) -> None:
        self.log.start(**fields)

    def stop(self, **fields: Any) -> None:
        """Flush and end the session; its last line counts the ordinary requests since the
        last row (no row's weight stands for them)."""
        self.log.stop(requests_unrecorded=self.unrecorded, **fields)

    def resample(self) -> None:
        """Now rather than at the next flush: a burst came in, every request of it with a row."""
        self.log.flush_now()

    def _resample(self) -> None:
        """At each flush, before the rows go: :attr:`every` from the rate of requests since
        the last one (the rows' weights, and the change in the ordinary ones not recorded); for
        a burst of rows that all stand for themselves, since the first of them ended (the flush
        before may be a quiet second ago). Its changes go to the ``session`` file when sampling
        starts or stops, or the share kept changes twofold."""
        now, rows, unrecorded = time.perf_counter(), self.requests, self.unrecorded
        count = sum(row[10] for row in rows) + unrecorded - self._unrecorded
        since = self._resampled
        if self.every == 1 and count >= self.burst:
            since = max(since, rows[0][5] + rows[0][6])
        self._unrecorded, self._resampled = unrecorded, now
        rate = count / (now - since) if now > since else 0.0
        every = max(1, math.ceil(rate / self._sample_above - 1e-9))
        self.every = every
        last = self._announced
        if every != last and (every == 1 or last == 1 or not 0.5 < every / last < 2):
            self._announced = every
            self.log.log(
                "session",
                event="sampling" if every > 1 else "sampling_stopped",
                every=every,
                requests_per_second=round(rate, 1),
                sample_above=self._sample_above,
            )

    def _stress(self, events: list[StressEvent], request_id: str | None = None) -> None:
        for event in events:
            self.log.log(
                "stress",
                request_id,
                event_type=event.event_type,
                severity=event.severity,
                description=event.description,
                **event.details,
            )

    def slow(self, rid: str, seconds: float) -> None:
        """A request took longer than :attr:`slow_request`."""
        self._stress(self.detector.request(time.monotonic(), seconds, rid), rid)

    def pressure(self, rid: str, wait: float, waiting: int) -> None:
        """A lease waited longer than :attr:`slow_selection`, or :attr:`saturated` requests
        were waiting."""
        self._stress(
            self.detector.selection(time.monotonic(), wait, waiting, self._queue_limit), rid
        )

    def stream(self, rid: str, event: str, backend: str | None, **fields: Any) -> None:
        self.log.log("streams", rid, event=event, backend=backend, **fields)

    def error(
        self, rid: str | None, component: str, operation: str, exc: BaseException, **fields: Any
    ) -> None:
        self.log.log(
            "errors",
            rid,
            component=component,
            operation=operation,
            error_type=type(exc).__name__,
            error_message=str(exc),
            **fields,
        )

    def disconnect(self, rid: str, phase: str, seconds: float, backend: str | None) -> None:
        self.log.log(
            "disconnects", rid, phase=phase, elapsed_ms=round(seconds * 1000, 3), backend=backend
        )

    def no_healthy_backend(self, rid: str, backends: int) -> None:
        self._stress(self.detector.no_healthy_backend(time.monotonic(), backends), rid)

    def provisioning(
        self,
        rid: str | None,
        operation: str,
        seconds: float,
        success: bool,
        error: str | None = None,
        retry: int = 0,
        **fields: Any,
    ) -> None:
        self.log.log(
            "provisioning",
            rid,
            operation=operation,
            duration_ms=round(seconds * 1000, 3),
            success=success,
            error=error,
            retry=retry,
            **fields,
        )
        if not success and operation == "provision_attempt_failed":
            self._stress(self.detector.provisioning_failure(time.monotonic()), rid)

    def breaker_open(self, provisioner: str, failures: int) -> None:
        self._stress(self.detector.breaker_open(time.monotonic(), provisioner, failures))

    def orchestrator_health(self, seconds: float, **fields: Any) -> None:
        self.log.log("orchestrator_health", None, duration_ms=round(seconds * 1000, 3), **fields)
        status = fields.get("status")
        if isinstance(status, str):
            self._stress(
                self.detector.orchestrator(time.monotonic(), status, fields.get("blocked_reason"))
            )
