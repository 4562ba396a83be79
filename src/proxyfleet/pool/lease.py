"""A lease: the right to send requests to one backend until released, exactly once."""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING

from proxyfleet.pool.health import Outcome

if TYPE_CHECKING:
    from proxyfleet.pool.backend import BackendSpec
    from proxyfleet.pool.pool import Pool
    from proxyfleet.pool.store import Grant

__all__ = ["Lease"]


class Lease:
    """Knows its backend and fencing token; released once (later calls do nothing).

    Used as an async context manager it releases on exit: as a success on a clean exit, as
    neutral when an exception escapes (a cancelled or aborted request says nothing about the
    backend) unless :meth:`fail` or :meth:`succeed` marked it first.
    """

    __slots__ = (
        "_grant",
        "_hold",
        "_outcome",
        "_pool",
        "_released",
        "backend",
        "request_id",
        "wait_seconds",
    )

    def __init__(
        self,
        pool: Pool,
        grant: Grant,
        backend: BackendSpec,
        request_id: str,
        wait_seconds: float,
    ) -> None:
        self._pool = pool
        self._grant = grant
        self._outcome: Outcome | None = None
        self._released = False
        self._hold = 0.0
        self.backend = backend
        self.request_id = request_id
        self.wait_seconds = wait_seconds

    @property
    def token(self) -> int:
        return self._grant.token

    @property
    def released(self) -> bool:
        return self._released

    def fail(self) -> None:
        """Mark the backend as having failed this request (counts towards quarantine)."""
        self._outcome = Outcome.FAILURE

    def succeed(self) -> None:
        self._outcome = Outcome.SUCCESS

    def cut(self) -> None:
        """The gateway cut this backend's connection mid-exchange (a timeout, a client that
        left): the upstream may not have noticed yet, so the backend stays leased for the
        pool's ``settle_grace`` after the release, in the background. Nothing else waits."""
        self._hold = self._pool.settings.settle_grace

    async def release(self, outcome: Outcome | None = None) -> None:
        """Give the backend back. Idempotent: only the first call counts."""
        if self._released:
            return
        self._released = True
        settled = outcome or self._outcome or Outcome.SUCCESS
        if self._hold:
            self._pool._release_after(self._grant, settled, self._hold)
            return
        await self._pool._release(self._grant, settled)

    async def __aenter__(self) -> Lease:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        if exc_type is None:
            await self.release()
        else:
            await self.release(self._outcome or Outcome.NEUTRAL)

    def __del__(self) -> None:
        if not self._released:
            self._released = True
            warnings.warn(
                f"lease on {self.backend.id} for {self.request_id} was never released",
                ResourceWarning,
                stacklevel=1,
            )
            self._pool._release_later(self._grant)

    def __repr__(self) -> str:
        state = "released" if self._released else "held"
        return f"<Lease {self.backend.id} token={self._grant.token} {state}>"
