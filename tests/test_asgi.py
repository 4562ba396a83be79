"""The small ASGI helpers, driven by plain async callables as ``receive``/``send``: JSON answers
and OpenAI-shaped errors (with Retry-After), the SSE error event, bounded body reads (413 by
declared and by streamed length, a client that leaves) and the lifespan protocol."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from proxyfleet._asgi import Message, lifespan, read_body, send_error, send_json, sse_error
from proxyfleet.errors import (
    BadRequest,
    ClientGone,
    LeaseTimeout,
    PayloadTooLarge,
    UpstreamError,
)


class Outbox:
    """A ``send`` that keeps what it is given."""

    def __init__(self) -> None:
        self.messages: list[Message] = []

    async def __call__(self, message: Message) -> None:
        self.messages.append(message)

    @property
    def start(self) -> Message:
        assert self.messages[0]["type"] == "http.response.start"
        return self.messages[0]

    @property
    def headers(self) -> list[tuple[bytes, bytes]]:
        return list(self.start["headers"])

    def header(self, name: bytes) -> bytes | None:
        values = [v for k, v in self.headers if k == name]
        assert len(values) <= 1, f"{name!r} sent twice"
        return values[0] if values else None

    @property
    def body(self) -> bytes:
        assert [m["type"] for m in self.messages] == ["http.response.start", "http.response.body"]
        return bytes(self.messages[1]["body"])


def inbox(*messages: Message) -> tuple[Callable[[], Awaitable[Message]], list[int]]:
    """A ``receive`` that hands out ``messages`` in order; the list counts the calls."""
    queue = list(messages)
    calls = [0]

    async def receive() -> Message:
        calls[0] += 1
        assert queue, "receive() called after the last message"
        return queue.pop(0)

    return receive, calls


def scope(content_length: int | str | None = None) -> dict[str, Any]:
    headers = [(b"host", b"127.0.0.1")]
    if content_length is not None:
        headers.append((b"content-length", str(content_length).encode()))
    return {"type": "http", "headers": headers}


def chunk(body: bytes, more: bool) -> Message:
    return {"type": "http.request", "body": body, "more_body": more}


# -- answers --------------------------------------------------------------------------------


async def test_send_json_headers_and_compact_body() -> None:
    send = Outbox()
    data = {"ok": True, "items": [1, "ü"]}
    await send_json(send, 201, data, rid=b"req-1", extra=[(b"cache-control", b"no-store")])
    assert send.start["status"] == 201
    assert send.header(b"content-type") == b"application/json"
    assert send.header(b"x-request-id") == b"req-1"
    assert send.header(b"cache-control") == b"no-store"
    assert json.loads(send.body) == data
    assert send.body == b'{"ok":true,"items":[1,"\\u00fc"]}'  # compact
    assert send.header(b"content-length") == str(len(send.body)).encode()


async def test_send_json_without_request_id_or_extras() -> None:
    send = Outbox()
    await send_json(send, 200, [])
    assert [k for k, _ in send.headers] == [b"content-type", b"content-length"]
    assert send.body == b"[]"


async def test_send_error_is_the_openai_shape() -> None:
    send = Outbox()
    await send_error(send, BadRequest("body is not JSON", code="invalid_json"), rid=b"r-9")
    assert send.start["status"] == 400
    assert json.loads(send.body) == {
        "error": {
            "message": "body is not JSON",
            "type": "invalid_request_error",
            "code": "invalid_json",
        }
    }
    assert send.header(b"x-request-id") == b"r-9"
    assert send.header(b"retry-after") is None


@pytest.mark.parametrize(
    ("seconds", "header"),
    [(30.0, b"30"), (2.6, b"3"), (0.2, b"1"), (0.0, b"1"), (1.0, b"1")],
)
async def test_send_error_retry_after_is_whole_seconds_at_least_one(
    seconds: float, header: bytes
) -> None:
    send = Outbox()
    await send_error(send, LeaseTimeout("no backend in time", retry_after=seconds))
    assert send.start["status"] == 503
    assert send.header(b"retry-after") == header
    assert json.loads(send.body)["error"]["code"] == "lease_timeout"


def test_sse_error_is_one_parseable_event() -> None:
    event = sse_error(UpstreamError("backend went away", code="upstream_stream_broken"))
    assert event.startswith(b"event: error\ndata: ")
    assert event.endswith(b"\n\n")
    assert event.count(b"\n\n") == 1
    lines = event.decode().strip().split("\n")
    assert lines[0] == "event: error"
    assert json.loads(lines[1].removeprefix("data: ")) == {
        "error": {
            "message": "backend went away",
            "type": "server_error",
            "code": "upstream_stream_broken",
        }
    }


# -- bodies ---------------------------------------------------------------------------------


async def test_read_body_in_one_message() -> None:
    receive, _ = inbox(chunk(b'{"a": 1}', more=False))
    assert await read_body(scope(8), receive, limit=8) == b'{"a": 1}'


async def test_read_body_joins_streamed_chunks() -> None:
    receive, calls = inbox(
        chunk(b"ab", True), chunk(b"", True), chunk(b"cd", True), chunk(b"e", False)
    )
    assert await read_body(scope(), receive, limit=5) == b"abcde"
    assert calls[0] == 4


async def test_an_empty_body() -> None:
    receive, _ = inbox({"type": "http.request"})
    assert await read_body(scope(0), receive, limit=10) == b""


async def test_declared_length_over_the_limit_is_413_before_reading() -> None:
    receive, calls = inbox(chunk(b"x" * 11, more=False))
    with pytest.raises(PayloadTooLarge) as caught:
        await read_body(scope(11), receive, limit=10)
    assert caught.value.status == 413
    assert "11 bytes exceeds the 10-byte limit" in caught.value.message
    assert calls[0] == 0  # refused on the header alone: the body is never read


async def test_single_message_over_the_limit_without_a_length_is_413() -> None:
    receive, _ = inbox(chunk(b"x" * 11, more=False))
    with pytest.raises(PayloadTooLarge) as caught:
        await read_body(scope(), receive, limit=10)
    assert "exceeds the 10-byte limit" in caught.value.message


async def test_streamed_length_over_the_limit_is_413_as_soon_as_it_passes() -> None:
    receive, calls = inbox(chunk(b"x" * 6, True), chunk(b"x" * 5, True), chunk(b"x" * 100, False))
    with pytest.raises(PayloadTooLarge):
        await read_body(scope(), receive, limit=10)
    assert calls[0] == 2  # stopped at the chunk that passed the limit, not at the end


async def test_a_lying_content_length_does_not_lift_the_limit() -> None:
    receive, _ = inbox(chunk(b"x" * 8, True), chunk(b"x" * 8, False))
    with pytest.raises(PayloadTooLarge):
        await read_body(scope(4), receive, limit=10)


async def test_an_unparseable_content_length_falls_back_to_counting() -> None:
    receive, _ = inbox(chunk(b"hello", False))
    assert await read_body(scope("five"), receive, limit=5) == b"hello"
    receive, _ = inbox(chunk(b"hello!", False))
    with pytest.raises(PayloadTooLarge):
        await read_body(scope("five"), receive, limit=5)


async def test_exactly_the_limit_is_accepted() -> None:
    receive, _ = inbox(chunk(b"12345", True), chunk(b"67890", False))
    assert await read_body(scope(10), receive, limit=10) == b"1234567890"


async def test_a_client_that_leaves_mid_body_is_client_gone() -> None:
    receive, _ = inbox(chunk(b"part", True), {"type": "http.disconnect"})
    with pytest.raises(ClientGone):
        await read_body(scope(100), receive, limit=1000)


async def test_a_client_that_leaves_before_any_body_is_client_gone() -> None:
    receive, _ = inbox({"type": "http.disconnect"})
    with pytest.raises(ClientGone):
        await read_body(scope(100), receive, limit=1000)


# -- lifespan -------------------------------------------------------------------------------


async def test_lifespan_runs_start_then_stop() -> None:
    events: list[str] = []
    send = Outbox()

    async def start() -> None:
        events.append("start")

    async def stop() -> None:
        events.append("stop")

    async def watching_send(message: Message) -> None:
        events.append(message["type"])
        await send(message)

    receive, calls = inbox({"type": "lifespan.startup"}, {"type": "lifespan.shutdown"})
    await lifespan(receive, watching_send, start, stop)
    assert events == [
        "start",
        "lifespan.startup.complete",
        "stop",
        "lifespan.shutdown.complete",
    ]
    assert calls[0] == 2  # returned after shutdown, without asking for more


async def test_lifespan_startup_failure_is_reported_then_raised() -> None:
    send = Outbox()
    stopped: list[bool] = []

    async def start() -> None:
        raise RuntimeError("cannot open the pool")

    async def stop() -> None:
        stopped.append(True)

    receive, _ = inbox({"type": "lifespan.startup"})
    with pytest.raises(RuntimeError, match="cannot open the pool"):
        await lifespan(receive, send, start, stop)
    assert send.messages == [{"type": "lifespan.startup.failed", "message": "cannot open the pool"}]
    assert not stopped


async def test_lifespan_shutdown_without_startup_still_stops() -> None:
    send = Outbox()
    stopped: list[bool] = []

    async def start() -> None:
        raise AssertionError("never started")

    async def stop() -> None:
        stopped.append(True)

    receive, _ = inbox({"type": "lifespan.shutdown"})
    await lifespan(receive, send, start, stop)
    assert stopped == [True]
    assert send.messages == [{"type": "lifespan.shutdown.complete"}]
