"""Prometheus metrics of one gateway, in a registry of its own (no process globals).

The request path only adds to plain counters (a dict entry, a histogram bucket found by
``bisect``): no lock, no metric object per request. A collector turns them into Prometheus
families when ``/metrics`` is scraped, together with the pool's gauges from a snapshot of the
store taken for that scrape (:meth:`GatewayMetrics.render`).
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator, Sequence

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from proxyfleet.pool.backend import BackendState
from proxyfleet.pool.store import BackendStatus

__all__ = ["CONTENT_TYPE", "GatewayMetrics", "Histogram"]

CONTENT_TYPE = b"text/plain; version=0.0.4; charset=utf-8"
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
_WAIT_BUCKETS = (0.001, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60)


class Histogram:
    """Observations in fixed buckets: a count per bucket (the last one is +Inf) and a sum."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value

    def buckets(self) -> list[tuple[str, float]]:
        """Cumulative counts per upper bound, as Prometheus wants them."""
        out: list[tuple[str, float]] = []
        running = 0
        for bound, count in zip((*self.bounds, float("inf")), self.counts, strict=True):
            running += count
            out.append(("+Inf" if bound == float("inf") else repr(float(bound)), running))
        return out


class _Collector(Collector):
    def __init__(self, metrics: GatewayMetrics) -> None:
        self._metrics = metrics
        self.statuses: Sequence[BackendStatus] = ()
        self.waiting = 0

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily | HistogramMetricFamily]:
        metrics = self._metrics
        requests = CounterMetricFamily(
            "proxyfleet_requests",
            "Client requests by route and status.",
            labels=["route", "status"],
        )
        for (route, status), count in sorted(metrics.requests.items()):
            requests.add_metric([route, str(status)], count)
        yield requests
        latency = HistogramMetricFamily(
            "proxyfleet_request_duration_seconds",
            "Time from request to the end of the response, by route.",
            labels=["route"],
        )
        for route, histogram in sorted(metrics.latency.items()):
            latency.add_metric([route], histogram.buckets(), histogram.total)
        yield latency
        wait = HistogramMetricFamily(
            "proxyfleet_lease_wait_seconds", "Time a request waited for a backend."
        )
        wait.add_metric([], metrics.lease_wait.buckets(), metrics.lease_wait.total)
        yield wait
        failovers = CounterMetricFamily(
            "proxyfleet_failovers", "Requests retried on another backend."
        )
        failovers.add_metric([], metrics.failovers)
        yield failovers
        yield from self._pool()

    def _pool(self) -> Iterator[GaugeMetricFamily]:
        statuses = self.statuses
        queue = GaugeMetricFamily("proxyfleet_queue_depth", "Requests waiting for a backend.")
        queue.add_metric([], self.waiting)
        yield queue
        states = GaugeMetricFamily("proxyfleet_backends", "Backends by state.", labels=["state"])
        for state in BackendState:
            states.add_metric([state.value], sum(1 for s in statuses if s.state is state))
        yield states
        inflight = GaugeMetricFamily(
            "proxyfleet_backend_inflight", "Requests in flight per backend.", labels=["backend"]
        )
        for status in statuses:
            inflight.add_metric([status.id], status.inflight)
        yield inflight


class GatewayMetrics:
    def __init__(self) -> None:
        self.requests: dict[tuple[str, int], int] = {}
        self.latency: dict[str, Histogram] = {}
        self.lease_wait = Histogram(_WAIT_BUCKETS)
        self.failovers = 0
        self.registry = CollectorRegistry(auto_describe=True)
        self._collector = _Collector(self)
        self.registry.register(self._collector)

    def observe(self, route: str, status: int, seconds: float) -> None:
        """One finished client request."""
        key = (route, status)
        requests = self.requests
        requests[key] = requests.get(key, 0) + 1
        latency = self.latency.get(route)
        if latency is None:
            latency = self.latency[route] = Histogram(_LATENCY_BUCKETS)
        latency.observe(seconds)

    def render(self, statuses: Sequence[BackendStatus], waiting: int) -> bytes:
        """The exposition, with the pool's gauges from ``statuses`` and ``waiting``."""
        self._collector.statuses, self._collector.waiting = statuses, waiting
        return generate_latest(self.registry)
