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

_SMOOTHING = 0.1  # seconds: the time constant of the smoothed rate of ordinary requests


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
    :attr:`ordinary` and in :attr:`unrecorded`, and gets a row only once :attr:`unrecorded`
    reaches :attr:`every`; the row stands for that many requests (its weight) and the count
    starts again, so the weights add up to the ordinary requests exactly. Every other request
    always gets its row, of weight 1.
    :attr:`every` follows the rate of ordinary requests (``debug.sample_above`` per second
    are kept), recomputed at each flush; it is 1, every request recorded, below that rate
    and when ``sample_above`` is 0. Rows held in memory and sent across are what debug mode
    costs the gateway's core beyond a few dozen instructions, so this is what keeps it
    under 1 % at tens of thousands of requests per second."""

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
        self.ordinary = 0  # ordinary requests seen (see the class docstring)
        self.every = 1  # 1 in `every` ordinary requests gets a row
        self.unrecorded = 0  # ordinary requests since the last one that got a row
        self.fast = min(config.slow_request, config.slow_selection)
        self._sample_above = config.sample_above
        self._counted = 0  # `ordinary` at the last resample
        self._rate = 0.0  # ordinary requests per second, smoothed (_SMOOTHING)
        self._announced = 1  # the `every` the session file last announced
        self.slow_request = config.slow_request
        self.slow_selection = config.slow_selection
        self.saturated = config.queue_saturation * queue_limit if queue_limit else float("inf")
        self._queue_limit = queue_limit

    def start(self, **fields: Any) -> None:
        self.log.start(**fields)

    def stop(self, **fields: Any) -> None:
        self.log.stop(**fields)

    def _resample(self, seconds: float) -> None:
        """At each flush: :attr:`every` from the rate of ordinary requests since the last one.
        Its changes go to the ``session`` file when sampling starts or stops, or the share
        kept changes twofold."""
        count = self.ordinary
        if seconds > 0:
            weight = 1 - math.exp(-seconds / _SMOOTHING)
            self._rate += ((count - self._counted) / seconds - self._rate) * weight
        self._counted = count
        every = max(1, math.ceil(self._rate / self._sample_above - 1e-9))
        self.every = every
        last = self._announced
        if every != last and (every == 1 or last == 1 or not 0.5 < every / last < 2):
            self._announced = every
            self.log.log(
                "session",
                event="sampling" if every > 1 else "sampling_stopped",
                every=every,
                ordinary_per_second=round(self._rate, 1),
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
