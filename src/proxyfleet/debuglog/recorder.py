"""What the gateway records in debug mode, category by category, with stress detection.

The gateway holds a recorder only when debug mode is on, so with it off every hook costs one
``is None`` check.
"""

from __future__ import annotations

import time
from typing import Any

from proxyfleet.config.model import DebugConfig
from proxyfleet.debuglog.stress import StressDetector, StressEvent, Thresholds
from proxyfleet.debuglog.writer import DebugLog

__all__ = ["DebugRecorder"]


class DebugRecorder:
    """One method per thing worth recording, except for what every request records: its
    ``requests`` and ``engine_selection`` lines. For those the gateway appends one row per
    request itself (its strings to ``request_strings``, its numbers packed to
    ``request_numbers``, as :mod:`proxyfleet.debuglog.columns` lays them out; a lease that
    did not serve the answer goes to ``selection_*``): no call, no object the garbage
    collector has to visit, which is what keeps debug mode near 1 % of the gateway's CPU.
    It then compares against :attr:`slow_request`, :attr:`slow_selection` and
    :attr:`saturated` and calls :meth:`slow` or :meth:`pressure` when a stress event may be
    due."""

    def __init__(self, config: DebugConfig, queue_limit: int, strategy: str) -> None:
        self.log = DebugLog(
            config.dir,
            queue_limit=config.queue_limit,
            secret_fields=config.secret_fields,
            flush_interval=config.flush_interval,
            encoder_cpus=config.encoder_cpus,
            strategy=strategy,
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
        self.request_strings = self.log.request_strings
        self.request_numbers = self.log.request_numbers
        self.selection_strings = self.log.selection_strings
        self.selection_numbers = self.log.selection_numbers
        self.slow_request = config.slow_request
        self.slow_selection = config.slow_selection
        self.saturated = config.queue_saturation * queue_limit if queue_limit else float("inf")
        self._queue_limit = queue_limit

    def start(self, **fields: Any) -> None:
        self.log.start(**fields)

    def stop(self, **fields: Any) -> None:
        self.log.stop(**fields)

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
