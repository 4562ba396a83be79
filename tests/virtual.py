"""Virtual time for in-process tests: an event loop whose clock moves only when nothing else can.

``VirtualTimeLoop`` keeps its own clock. With ``autojump`` (the default for :func:`run`), when
every task waits on a timer the loop jumps straight to the next timer instead of sleeping, so a
30-second lease timeout takes no time at all and always fires at exactly the same instant
relative to everything else. Without it, the clock moves only when a test sets ``loop.now``.
Real I/O still works (the selector is polled without waiting), but tests on virtual time use
the memory transport and the in-process ASGI client, not sockets.
"""

from __future__ import annotations

import asyncio
import selectors
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


class _JumpingSelector(selectors.DefaultSelector):
    """Polls for I/O without blocking; a wait for a timer moves the loop's clock instead."""

    def __init__(self, loop: VirtualTimeLoop) -> None:
        super().__init__()
        self._loop = loop

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        ready = super().select(0)
        if ready or not timeout or timeout <= 0:
            return ready
        if self._loop.autojump:
            self._loop.now += timeout
            return []
        return super().select(timeout)


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """An event loop on a clock of its own (``now``, in seconds from 0)."""

    def __init__(self, autojump: bool = False) -> None:
        self.now = 0.0
        self.autojump = autojump
        super().__init__(_JumpingSelector(self))

    def time(self) -> float:
        return self.now


def run(coro: Coroutine[Any, Any, T], *, autojump: bool = True) -> T:
    """Run ``coro`` to the end on a fresh virtual-time loop."""
    loop = VirtualTimeLoop(autojump=autojump)
    try:
        return loop.run_until_complete(coro)
    finally:
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()
