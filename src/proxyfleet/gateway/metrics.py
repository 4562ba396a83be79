"""Prometheus metrics of one gateway, in a registry of its own (no process globals).

Counters and histograms are updated on the request path; the pool's gauges come from a
snapshot of the store taken for each scrape (:meth:`GatewayMetrics.render`), so the request
path pays nothing for them.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from proxyfleet.pool.backend import BackendState
from proxyfleet.pool.store import BackendStatus

__all__ = ["CONTENT_TYPE", "GatewayMetrics"]

CONTENT_TYPE = b"text/plain; version=0.0.4; charset=utf-8"
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class _PoolCollector(Collector):
    """The pool's gauges, from the snapshot taken for this scrape."""

    def __init__(self) -> None:
        self.statuses: Sequence[BackendStatus] = ()
        self.waiting = 0

    def collect(self) -> Iterator[GaugeMetricFamily]:
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
        self.registry = CollectorRegistry(auto_describe=True)
        self._requests = Counter(
            "proxyfleet_requests",
            "Client requests by route and status.",
            ["route", "status"],
            registry=self.registry,
        )
        self._latency = Histogram(
            "proxyfleet_request_duration_seconds",
            "Time from request to the end of the response, by route.",
            ["route"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.lease_wait = Histogram(
            "proxyfleet_lease_wait_seconds",
            "Time a request waited for a backend.",
            buckets=(0.001, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60),
            registry=self.registry,
        )
        self.failovers = Counter(
            "proxyfleet_failovers", "Requests retried on another backend.", registry=self.registry
        )
        self._pool = _PoolCollector()
        self.registry.register(self._pool)
        self._request_children: dict[tuple[str, int], Counter] = {}
        self._latency_children: dict[str, Histogram] = {}

    def observe(self, route: str, status: int, seconds: float) -> None:
        key = (route, status)
        counter = self._request_children.get(key)
        if counter is None:
            counter = self._request_children[key] = self._requests.labels(route, str(status))
        counter.inc()
        latency = self._latency_children.get(route)
        if latency is None:
            latency = self._latency_children[route] = self._latency.labels(route)
        latency.observe(seconds)

    def render(self, statuses: Sequence[BackendStatus], waiting: int) -> bytes:
        """The exposition, with the pool's gauges from ``statuses`` and ``waiting``."""
        self._pool.statuses, self._pool.waiting = statuses, waiting
        return generate_latest(self.registry)
