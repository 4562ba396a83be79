"""Stress detection: decide, from observations, which stress events to write. Pure: the clock
is passed in, nothing is written here.

Each event type is reported at most once per window (not once per request), with a severity and
the count seen in the window.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass
from typing import Any

__all__ = ["StressDetector", "StressEvent", "Thresholds"]


@dataclass(frozen=True, slots=True)
class Thresholds:
    slow_request: float = 5.0  # seconds
    slow_selection: float = 2.0  # seconds waiting for a backend
    slow_requests_per_window: int = 10
    provisioning_failures_per_window: int = 5
    queue_saturation: float = 0.8  # of queue_limit
    window: float = 60.0  # seconds


@dataclass(frozen=True, slots=True)
class StressEvent:
    event_type: str
    severity: str  # info / warning / critical
    description: str
    details: dict[str, Any]


class StressDetector:
    def __init__(self, thresholds: Thresholds) -> None:
        self.t = thresholds
        self._last: dict[str, float] = {}
        self._slow: collections.deque[float] = collections.deque()
        self._failed: collections.deque[float] = collections.deque()

    def _once(self, now: float, event: StressEvent) -> list[StressEvent]:
        last = self._last.get(event.event_type)
        if last is not None and now - last < self.t.window:
            return []
        self._last[event.event_type] = now
        return [event]

    def _count(self, times: collections.deque[float], now: float) -> int:
        times.append(now)
        while times and now - times[0] > self.t.window:
            times.popleft()
        return len(times)

    def request(self, now: float, seconds: float, request_id: str) -> list[StressEvent]:
        if seconds <= self.t.slow_request:
            return []
        count = self._count(self._slow, now)
        out = self._once(
            now,
            StressEvent(
                "slow_request",
                "warning",
                f"request took {seconds:.2f}s (threshold {self.t.slow_request:g}s)",
                {"duration_seconds": round(seconds, 3), "example_request_id": request_id},
            ),
        )
        if count > self.t.slow_requests_per_window:
            out += self._once(
                now,
                StressEvent(
                    "high_slow_request_rate",
                    "critical",
                    f"{count} slow requests in the last {self.t.window:g}s",
                    {"count": count, "window_seconds": self.t.window},
                ),
            )
        return out

    def selection(
        self, now: float, seconds: float, waiting: int, queue_limit: int
    ) -> list[StressEvent]:
        out: list[StressEvent] = []
        if seconds > self.t.slow_selection:
            out += self._once(
                now,
                StressEvent(
                    "slow_selection",
                    "warning",
                    f"a request waited {seconds:.2f}s for a backend",
                    {"wait_seconds": round(seconds, 3), "waiting": waiting},
                ),
            )
        if queue_limit and waiting >= self.t.queue_saturation * queue_limit:
            out += self._once(
                now,
                StressEvent(
                    "queue_saturation",
                    "critical",
                    f"{waiting} requests waiting, {waiting / queue_limit:.0%} of queue_limit",
                    {"waiting": waiting, "queue_limit": queue_limit},
                ),
            )
        return out

    def no_healthy_backend(self, now: float, backends: int) -> list[StressEvent]:
        return self._once(
            now,
            StressEvent(
                "all_backends_unhealthy",
                "critical",
                f"all {backends} backends are unhealthy",
                {"backends": backends},
            ),
        )

    def provisioning_failure(self, now: float) -> list[StressEvent]:
        count = self._count(self._failed, now)
        if count <= self.t.provisioning_failures_per_window:
            return []
        return self._once(
            now,
            StressEvent(
                "high_provisioning_failure_rate",
                "critical",
                f"{count} provisioning failures in the last {self.t.window:g}s",
                {"count": count, "window_seconds": self.t.window},
            ),
        )

    def breaker_open(self, now: float, provisioner: str, failures: int) -> list[StressEvent]:
        return self._once(
            now,
            StressEvent(
                "provisioning_circuit_breaker",
                "critical",
                f"provisioning circuit breaker opened after {failures} failures in a row",
                {"provisioner": provisioner, "consecutive_failures": failures},
            ),
        )

    def orchestrator(self, now: float, status: str, reason: str | None) -> list[StressEvent]:
        if status == "healthy":
            return []
        return self._once(
            now,
            StressEvent(
                "orchestrator_degraded",
                "critical" if status == "unavailable" else "warning",
                f"orchestrator is {status}" + (f": {reason}" if reason else ""),
                {"status": status, "blocked_reason": reason},
            ),
        )
