"""Active health probes: every ``interval``, each backend that is free is leased and checked.

A probe takes a real lease, so a single-flight backend never sees a probe beside a request;
busy backends are skipped (their requests are the probe). A quarantined backend past its cooldown
is probed half-open and returns to service when the check passes.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from proxyfleet.logs import event
from proxyfleet.pool.backend import BackendSpec
from proxyfleet.pool.health import Outcome
from proxyfleet.pool.pool import Pool

__all__ = ["Prober"]

_log = logging.getLogger("proxyfleet.pool.prober")

Check = Callable[[BackendSpec], Awaitable[bool]]


class Prober:
    def __init__(self, pool: Pool, check: Check, interval: float) -> None:
        self._pool = pool
        self._check = check
        self._interval = interval
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Prober:
        self._task = asyncio.create_task(self._run(), name="proxyfleet-prober")
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def probe_once(self) -> dict[str, bool | None]:
        """Probe every free backend now; None for the ones that were busy."""
        results: dict[str, bool | None] = {}
        for backend in self._pool.backends:
            lease = await self._pool.try_lease(backend.id, f"probe-{backend.id}")
            if lease is None:
                results[backend.id] = None
                continue
            try:
                ok = await self._check(backend)
            except BaseException:
                await lease.release(Outcome.NEUTRAL)
                raise
            await lease.release(Outcome.SUCCESS if ok else Outcome.FAILURE)
            results[backend.id] = ok
            if not ok:
                event(_log, "probe_failed", logging.WARNING, backend=backend.id)
        return results

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            await self.probe_once()
