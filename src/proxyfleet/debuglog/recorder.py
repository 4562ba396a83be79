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
    def __init__(self, config: DebugConfig, queue_limit: int) -> None:
        self.log = DebugLog(
            config.dir, queue_limit=config.queue_limit, secret_fields=config.secret_fields
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
        self._queue_limit = queue_limit
        self._log_hot = self.log.log_hot
        self._slow_request = config.slow_request
        self._slow_selection = config.slow_selection
        self._saturated = config.queue_saturation * queue_limit if queue_limit else float("inf")

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

    def request(
        self,
        rid: str,
        method: str,
        path: str,
        status: int,
        seconds: float,
        backend: str | None,
        size: int,
        ttfb: float | None,
    ) -> None:
        self._log_hot("requests", rid, (method, path, status, seconds, backend, size, ttfb))
        if seconds > self._slow_request:  # only slow requests can raise a stress event
            self._stress(self.detector.request(time.monotonic(), seconds, rid), rid)

    def selection(
        self,
        rid: str,
        strategy: str,
        backend: str,
        wait: float,
        waiting: int,
        candidates: int,
        attempt: int,
    ) -> None:
        self._log_hot(
            "engine_selection", rid, (strategy, backend, wait, waiting, candidates, attempt)
        )
        if wait > self._slow_selection or waiting >= self._saturated:
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
