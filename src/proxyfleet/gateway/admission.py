"""How many client requests the gateway serves at once (``server.max_sessions``)."""

from __future__ import annotations

from proxyfleet.errors import Overloaded

__all__ = ["Admission"]


class Admission:
    """Counts requests (and WebSocket sessions) in flight; beyond ``limit``, 503.

    The hot path reads ``active`` and ``limit`` itself and calls :meth:`refuse` when full (a
    method call less per request); everything else uses :meth:`enter`."""

    __slots__ = ("active", "limit")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.active = 0

    def refuse(self) -> Overloaded:
        return Overloaded(
            f"{self.active} requests in flight (server.max_sessions)", retry_after=1.0
        )

    def enter(self) -> None:
        if self.active >= self.limit:
            raise self.refuse()
        self.active += 1

    def leave(self) -> None:
        self.active -= 1
