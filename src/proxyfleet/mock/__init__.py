"""The mocks the demo, the tests and the benchmarks run against over real sockets: an
OpenAI-compatible upstream (:mod:`.server`, its answers planned in :mod:`.plan` and rendered in
:mod:`.payloads`) and an orchestrator that provisions such upstreams (:mod:`.orchestrator`)."""

from proxyfleet.mock.server import MockSettings

__all__ = ["MockSettings"]
