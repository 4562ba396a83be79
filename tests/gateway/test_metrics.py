"""/metrics: plain counters on the request path, Prometheus families at scrape time, parsed
back with prometheus_client's own parser."""

from __future__ import annotations

import asyncio

from prometheus_client.parser import text_string_to_metric_families

from proxyfleet.gateway.metrics import GatewayMetrics, Histogram
from proxyfleet.transports import Answer, MemoryTransport
from tests.asgi import CHAT, call, memory_gateway
from tests.virtual import run


def samples(text: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text.decode()):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def test_a_histogram_counts_each_value_in_the_first_bucket_it_fits() -> None:
    histogram = Histogram((0.1, 1.0))
    for value in (0.05, 0.1, 0.5, 1.0, 7.0):
        histogram.observe(value)
    assert histogram.buckets() == [("0.1", 2), ("1.0", 4), ("+Inf", 5)]
    assert histogram.total == 8.65


def test_families_render_and_parse() -> None:
    metrics = GatewayMetrics()
    metrics.observe("responses", 200, 0.2)
    metrics.observe("responses", 503, 0.001)
    metrics.failovers += 3
    parsed = samples(metrics.render([], 4))
    assert parsed[("proxyfleet_requests_total", (("route", "responses"), ("status", "200")))] == 1
    assert parsed[("proxyfleet_requests_total", (("route", "responses"), ("status", "503")))] == 1
    assert parsed[("proxyfleet_request_duration_seconds_count", (("route", "responses"),))] == 2
    assert parsed[("proxyfleet_failovers_total", ())] == 3
    assert parsed[("proxyfleet_queue_depth", ())] == 4


def test_the_gateway_counts_requests_waits_and_pool_state() -> None:
    async def scenario() -> None:
        gateway = memory_gateway(MemoryTransport(Answer(delay=1.0)), 2)
        await gateway.start()
        replies = [await call(gateway, "POST", "/v1/chat/completions", CHAT) for _ in range(3)]
        await asyncio.sleep(0.5)
        during = samples(await (await call(gateway, "GET", "/metrics")).read())
        assert during[("proxyfleet_backends", (("state", "busy"),))] == 2
        assert during[("proxyfleet_queue_depth", ())] == 1
        assert during[("proxyfleet_backend_inflight", (("backend", "m0"),))] == 1
        assert [await r.status() for r in replies] == [200] * 3
        await (await call(gateway, "GET", "/v1/nothing")).read()
        after = samples(await (await call(gateway, "GET", "/metrics")).read())
        key = (("route", "chat_completions"), ("status", "200"))
        assert after[("proxyfleet_requests_total", key)] == 3
        assert after[("proxyfleet_requests_total", (("route", "passthrough"), ("status", "200")))]
        assert after[("proxyfleet_lease_wait_seconds_count", ())] == 4
        assert after[("proxyfleet_lease_wait_seconds_bucket", (("le", "0.001"),))] == 3
        assert after[("proxyfleet_backends", (("state", "idle"),))] == 2
        await gateway.stop()

    run(scenario())
