"""The active health check of a backend, through its transport: ``GET <base><path>``."""

from __future__ import annotations

import asyncio

from proxyfleet.errors import UpstreamError
from proxyfleet.pool import BackendSpec
from proxyfleet.pool.prober import Check
from proxyfleet.transports import Request, Transports

__all__ = ["probe_check"]


def probe_check(transports: Transports, path: str, timeout: float) -> Check:
    """A check that passes when the backend answers ``GET path`` below 500 within ``timeout``."""

    async def check(backend: BackendSpec) -> bool:
        try:
            async with asyncio.timeout(timeout):
                exchange = await transports.of(backend).handle(backend, Request("GET", path))
                try:
                    await exchange.read()
                finally:
                    exchange.release()
        except (UpstreamError, TimeoutError):
            return False
        return exchange.status < 500

    return check
