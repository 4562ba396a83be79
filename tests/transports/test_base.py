"""The transport interface: requests, and the registry that maps a backend's kind to its
transport (both real transports satisfy the protocol)."""

from __future__ import annotations

import pytest

from proxyfleet.errors import UpstreamError
from proxyfleet.pool import BackendSpec
from proxyfleet.transports import HttpTransport, MemoryTransport, Request, Transport, Transports


def test_a_request_defaults_to_no_headers_and_no_body() -> None:
    request = Request("GET", "/models")
    assert (request.method, request.target, dict(request.headers), request.body) == (
        "GET",
        "/models",
        {},
        b"",
    )
    assert "GET /models" in repr(request)


async def test_kinds_map_to_transports_opened_and_closed_together() -> None:
    memory = MemoryTransport()
    http: Transport = HttpTransport()
    async with Transports({"memory": memory, "http": http}) as transports:
        assert transports.of(BackendSpec("a", "memory://a", kind="memory")) is memory
        assert transports.of(BackendSpec("b", "http://127.0.0.1:1/v1")) is http
        with pytest.raises(UpstreamError, match="no transport for kind 'browser'"):
            transports.of(BackendSpec("c", "browser://c", kind="browser"))
    assert memory.closed
