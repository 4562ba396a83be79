"""Whether an MCP route's server starts: a small state machine, without processes.

::

    UNKNOWN ──answered──▶ OK ◀──answered── FAILING
       │                   │                 ▲  │
       └──────failed───────┴─────failed──────┘  └─failed (again: the delay doubles)

A start *fails* when the command cannot run, or when its server exits before it has said
anything (it "exits at once"); it is *answered* when a server has said something. While the
route is failing, the route re-checks it (starts a server and pings it) after
:attr:`StartHealth.retry_in` seconds, a delay that doubles from ``first_retry`` up to
``max_retry``, so that a fixed server is seen without any client having to try.
"""

from __future__ import annotations

import enum
from typing import Any

__all__ = ["StartHealth", "StartState"]


class StartState(enum.Enum):
    UNKNOWN = "unknown"  # no server started (and answered, or failed) yet
    OK = "ok"
    FAILING = "failing"


class StartHealth:
    def __init__(self, first_retry: float = 1.0, max_retry: float = 30.0) -> None:
        self.first_retry = first_retry
        self.max_retry = max_retry
        self.state = StartState.UNKNOWN
        self.reason: str | None = None
        self.failures = 0  # in a row

    @property
    def failing(self) -> bool:
        return self.state is StartState.FAILING

    @property
    def retry_in(self) -> float:
        """Seconds before the next re-check while failing."""
        doubled: float = self.first_retry * 2.0 ** max(0, self.failures - 1)
        return min(self.max_retry, doubled)

    def answered(self) -> bool:
        """A server said something; True when that ends a failing spell."""
        recovered = self.failing
        self.state, self.reason, self.failures = StartState.OK, None, 0
        return recovered

    def failed(self, reason: str) -> float:
        """A start failed, for ``reason``; the seconds before the next re-check."""
        self.state, self.reason = StartState.FAILING, reason
        self.failures += 1
        return self.retry_in

    def describe(self) -> dict[str, Any]:
        return {"status": self.state.value, "reason": self.reason, "failures": self.failures}
