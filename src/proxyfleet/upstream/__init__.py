"""The upstream HTTP/1.1 client of the gateway's hot path."""

from proxyfleet.upstream.client import (
    Origin,
    UpstreamClient,
    UpstreamClosed,
    UpstreamProtocolError,
    UpstreamResponse,
)

__all__ = [
    "Origin",
    "UpstreamClient",
    "UpstreamClosed",
    "UpstreamProtocolError",
    "UpstreamResponse",
]
