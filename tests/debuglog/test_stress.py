"""Stress detection with a clock we move by hand: each event once per window."""

from __future__ import annotations

from proxyfleet.debuglog.stress import StressDetector, Thresholds

T = Thresholds(
    slow_request=1.0,
    slow_selection=0.5,
    slow_requests_per_window=3,
    provisioning_failures_per_window=2,
    queue_saturation=0.8,
    window=60.0,
)


def test_slow_requests_once_per_window_and_the_rate() -> None:
    d = StressDetector(T)
    assert d.request(0.0, 0.5, "fast") == []
    kinds = [
        e.event_type for now in (1.0, 2.0, 3.0, 4.0, 5.0) for e in d.request(now, 2.0, f"r{now}")
    ]
    assert kinds == ["slow_request", "high_slow_request_rate"]
    later = [e.event_type for e in d.request(61.5, 2.0, "next-window")]
    assert later == ["slow_request"]  # its window (from 1.0) is over; the rate's (4.0) is not
    assert d.request(64.5, 2.0, "r") == []  # only 3 slow requests left in the last 60 s


def test_selection_queue_backends_provisioning() -> None:
    d = StressDetector(T)
    assert [e.event_type for e in d.selection(0, 0.6, 1, 100)] == ["slow_selection"]
    assert d.selection(1, 0.6, 1, 100) == []
    (saturated,) = d.selection(2, 0.0, 80, 100)
    assert (saturated.event_type, saturated.severity) == ("queue_saturation", "critical")
    assert [e.event_type for e in d.no_healthy_backend(3, 4)] == ["all_backends_unhealthy"]
    assert d.no_healthy_backend(4, 4) == []
    assert d.provisioning_failure(0) == []
    assert d.provisioning_failure(1) == []
    (rate,) = d.provisioning_failure(2)
    assert rate.details == {"count": 3, "window_seconds": 60.0}
