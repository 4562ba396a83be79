"""What a response was, derived in one place: a recording wrapper around the ASGI ``send``.

Everything sent to the client goes through :meth:`Recording.send`, which notes the status and
the time of the head, whether the body is an event stream, the bytes, and whether the last
body message went out. The few facts ``send`` cannot see are set where they become known: the
backend that served it (the failover routine), why a started stream broke (the pump), that the
client left (the disconnect watcher), and the lease's selection in debug mode.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

from proxyfleet._asgi import Message, Send
from proxyfleet.debuglog.columns import Selection

__all__ = ["Recording"]


class Recording:
    """One client request's response, as recorded from what went out."""

    __slots__ = (
        "_send",
        "answering",
        "backend",
        "broken",
        "bytes",
        "complete",
        "first_byte",
        "gone",
        "on_stream",
        "rid",
        "selection",
        "sse",
        "started",
        "status",
    )

    def __init__(self, send: Send, rid: str, started: float) -> None:
        self._send = send
        self.rid = rid
        self.started = started  # perf_counter when the request came in
        self.status = 0  # of the response head that went out (0: none yet)
        self.first_byte = 0.0  # perf_counter when the head went out
        self.bytes = 0
        self.complete = False  # the last body message went (or is going) out
        self.sse = False  # the body is an event stream
        self.backend: str | None = None  # the backend of the lease that served it
        self.answering = False  # its upstream exchange has an answer head
        self.broken: str | None = None  # why a started stream ended early: upstream_error…
        self.gone = False  # the client disconnected
        # debug mode: the lease that served it, when that lease waited or was not the first
        # attempt (see debuglog.columns)
        self.selection: Selection | None = None
        # called when an event stream starts (debug mode's ``streams`` line)
        self.on_stream: Callable[[Recording], None] | None = None

    def send(self, message: Message) -> Awaitable[None]:
        """Note what ``message`` says, then hand it to the server's ``send`` (its awaitable is
        returned, not awaited here: no coroutine of our own per message)."""
        if message["type"] == "http.response.body":
            self.bytes += len(message.get("body", b""))
            if not message.get("more_body"):
                self.complete = True
        elif message["type"] == "http.response.start":
            self.status = message["status"]
            self.first_byte = time.perf_counter()
            for name, value in message.get("headers", ()):
                if name == b"content-type":
                    self.sse = value.startswith(b"text/event-stream")
                    break
            if self.sse and self.on_stream is not None:
                self.on_stream(self)
        return self._send(message)

    @property
    def answered(self) -> bool:
        """A response head went out: nothing else can be answered any more."""
        return self.status != 0

    @property
    def shown_status(self) -> int:
        """The status for logs and metrics: 499 when the client left before any answer."""
        return self.status or 499

    def lease(self, candidates: int) -> Selection | None:
        """The selection of the lease that served it, for its debug row. A first attempt
        granted at once kept nothing (that is most requests, so it costs nothing): no wait, no
        queue, ``candidates`` backends, at the request's start (its body read just before)."""
        if self.selection is not None:
            return self.selection
        return None if self.backend is None else (self.started, 0.0, 0, candidates, 0)

    def end_reason(self) -> str:
        """Why the response ended: completed, client_disconnected, upstream_error, timeout, or
        cancelled (the gateway gave up on it, e.g. at the end of a shutdown grace)."""
        if self.gone:
            return "client_disconnected"
        if self.broken:
            return self.broken
        if not self.complete:
            return "cancelled"
        return "upstream_error" if self.status >= 500 else "completed"

    def __repr__(self) -> str:
        fields: dict[str, Any] = {"rid": self.rid, "status": self.status, "bytes": self.bytes}
        return f"<Recording {fields}>"
