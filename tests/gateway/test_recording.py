"""The recording wrapper around ``send``: what a response was, derived from what went out."""

from __future__ import annotations

from typing import Any

from proxyfleet.gateway.recording import Recording


class Sink:
    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []

    async def __call__(self, message: Any) -> None:
        self.messages.append(message)


async def test_status_bytes_first_byte_and_completion_come_from_the_messages() -> None:
    sink = Sink()
    recording = Recording(sink, "rid-1", started=10.0)
    assert (recording.answered, recording.shown_status) == (False, 499)
    await recording.send(
        {"type": "http.response.start", "status": 201, "headers": [(b"content-type", b"x/y")]}
    )
    assert (recording.status, recording.sse, recording.answered) == (201, False, True)
    assert recording.first_byte > 0
    await recording.send({"type": "http.response.body", "body": b"abc", "more_body": True})
    assert (recording.bytes, recording.complete) == (3, False)
    await recording.send({"type": "http.response.body", "body": b"de"})
    assert (recording.bytes, recording.complete) == (5, True)
    assert len(sink.messages) == 3  # everything reached the server's send
    assert recording.end_reason() == "completed"


async def test_an_event_stream_is_noticed_and_announced_once() -> None:
    started: list[str] = []
    recording = Recording(Sink(), "rid-2", started=0.0)
    recording.on_stream = lambda r: started.append(r.rid)
    head = [(b"x-a", b"1"), (b"content-type", b"text/event-stream; charset=utf-8")]
    await recording.send({"type": "http.response.start", "status": 200, "headers": head})
    assert recording.sse
    assert started == ["rid-2"]


def test_why_a_response_ended() -> None:
    recording = Recording(Sink(), "r", 0.0)
    assert recording.end_reason() == "cancelled"  # nothing finished it
    recording.status, recording.complete = 502, True
    assert recording.end_reason() == "upstream_error"
    recording.broken = "timeout"
    assert recording.end_reason() == "timeout"
    recording.gone = True
    assert recording.end_reason() == "client_disconnected"


def test_the_lease_of_a_first_attempt_granted_at_once_is_rebuilt_for_debug_rows() -> None:
    recording = Recording(Sink(), "r", started=5.0)
    assert recording.lease(3) is None  # no backend served it
    recording.backend = "b1"
    assert recording.lease(3) == (5.0, 0.0, 0, 3, 0)
    recording.selection = (6.0, 0.5, 2, 3, 1)
    assert recording.lease(3) == (6.0, 0.5, 2, 3, 1)
