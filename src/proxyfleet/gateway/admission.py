"""How many client requests the gateway serves at once (``server.max_sessions``)."""

from __future__ import annotations

from proxyfleet.errors import Overloaded

__all__ = ["Admission"]


class Admission:
    """Counts requests (and WebSocket sessions) in flight; beyond ``limit``, 503."""

    __slots__ = ("_limit", "active")

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self.active = 0

    def enter(self) -> None:
        if self.active >= self._limit:
            raise Overloaded(
                f"{self.active} requests in flight (server.max_sessions)", retry_after=1.0
            )
        self.active += 1

    def leave(self) -> None:
        self.active -= 1
