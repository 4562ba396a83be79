"""Each request's debug record: :class:`RequestLog` fed the gateway's real response recording
(:class:`~proxyfleet.gateway.recording.Recording`, the ``Served`` of production, over an ASGI
``send`` that keeps the messages): the rows appended to the recorder's ``requests`` and
``selections``, sampling and its weights, and the slow, stream and disconnect lines written."""

from __future__ import annotations

import json
import math
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from proxyfleet._asgi import Message
from proxyfleet.config.model import DebugConfig
from proxyfleet.debuglog.recorder import DebugRecorder
from proxyfleet.debuglog.requests import RequestLog
from proxyfleet.gateway.recording import Recording

PATH = "/v1/chat/completions"


@pytest.fixture
async def recorder(tmp_path: Path) -> AsyncIterator[DebugRecorder]:
    config = DebugConfig(
        enabled=True,
        dir=tmp_path / "debug",
        slow_request=1.0,
        slow_selection=0.5,
        flush_interval=60,  # nothing is flushed unless a test asks
    )
    made = DebugRecorder(config, queue_limit=10, strategy="lru")
    yield made
    made.stop()  # an encoder a failed test left behind (a no-op once stopped)


class Client:
    """The ASGI server's side: what the gateway sent."""

    def __init__(self) -> None:
        self.messages: list[Message] = []

    async def send(self, message: Message) -> None:
        self.messages.append(message)


async def answered(
    rid: str,
    status: int = 200,
    *,
    sse: bool = False,
    body: bytes = b'{"ok":true}',
    backend: str | None = "b1",
    complete: bool = True,
) -> Recording:
    """A request's recording once the gateway answered it through ``send``."""
    served = Recording(Client().send, rid, time.perf_counter())
    served.backend = backend
    kind = b"text/event-stream" if sse else b"application/json"
    await served.send(
        {"type": "http.response.start", "status": status, "headers": [(b"content-type", kind)]}
    )
    await served.send({"type": "http.response.body", "body": body, "more_body": not complete})
    return served


def lines(recorder: DebugRecorder, category: str) -> list[dict[str, Any]]:
    path = recorder.log.path(category)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


async def test_a_request_row_holds_what_the_recording_knows(recorder: DebugRecorder) -> None:
    served = await answered("r-1", 201, body=b"x" * 42, backend="b3")
    RequestLog(recorder).finished("POST", PATH, served, 0.01, candidates=4)
    assert recorder.requests == [
        (
            "r-1",
            "POST",
            PATH,
            "b3",
            201,
            served.started,
            0.01,
            42,
            served.first_byte,
            (served.started, 0.0, 0, 4, 0),  # granted at once on the first attempt
            1,
        )
    ]
    assert served.first_byte >= served.started
    assert recorder.selections == []
    assert recorder.unrecorded == 0


async def test_a_client_gone_before_any_answer(recorder: DebugRecorder) -> None:
    served = Recording(Client().send, "r-gone", time.perf_counter())
    served.gone = True
    RequestLog(recorder).finished("POST", PATH, served, 0.02, candidates=2)
    ((rid, _, _, backend, status, _, _, size, first, lease, weight),) = recorder.requests
    assert (rid, backend, status, size, first, lease, weight) == (
        "r-gone",
        None,
        499,
        0,
        0.0,
        None,
        1,
    )


async def test_ordinary_requests_are_sampled_and_their_weights_add_up(
    recorder: DebugRecorder,
) -> None:
    log = RequestLog(recorder)
    recorder.every = 4
    for n in range(10):
        log.finished("GET", "/v1/models", await answered(f"ok-{n}"), 0.01, candidates=2)
    assert [(row[0], row[10]) for row in recorder.requests] == [("ok-3", 4), ("ok-7", 4)]
    assert recorder.unrecorded == 2
    # what is not ordinary is always recorded, for itself, and leaves the count alone
    log.finished("GET", "/v1/models", await answered("error", 500), 0.01, 2)
    log.finished("GET", "/v1/models", await answered("client-error", 404), 0.01, 2)
    log.finished("GET", "/v1/models", await answered("not-quick"), 0.75, 2)
    gone = await answered("gone")
    gone.gone = True
    log.finished("GET", "/v1/models", gone, 0.01, 2)
    assert [(row[0], row[10]) for row in recorder.requests[2:]] == [
        ("error", 1),
        ("client-error", 1),
        ("not-quick", 1),
        ("gone", 1),
    ]
    assert recorder.unrecorded == 2
    recorder.every = 2  # the rate fell: the next ordinary one stands for all since the last row
    log.finished("GET", "/v1/models", await answered("ok-10"), 0.01, 2)
    assert (recorder.requests[-1][0], recorder.requests[-1][10]) == ("ok-10", 3)
    ordinary = [row for row in recorder.requests if row[0].startswith("ok-")]
    assert sum(row[10] for row in ordinary) + recorder.unrecorded == 11


async def test_a_retried_request_is_not_ordinary(recorder: DebugRecorder) -> None:
    log = RequestLog(recorder)
    recorder.every = 100
    served = await answered("retried", backend="b1")  # the first attempt's backend
    log.selected("retried", "b2", 0.0, 0, 3, 1, served)  # the second attempt's lease
    served.backend = "b2"
    log.finished("POST", PATH, served, 0.01, candidates=3)
    (row,) = recorder.requests
    assert (row[3], row[10]) == ("b2", 1)
    assert row[9] is served.selection
    assert row[9] is not None
    assert row[9][1:] == (0.0, 0, 3, 1)
    # the failed first attempt's lease, granted at once, got a line of its own
    assert recorder.selections == [("retried", "b1", (served.started, 0.0, 0, 3, 0))]
    assert recorder.unrecorded == 0


async def test_leases_worth_noting(recorder: DebugRecorder) -> None:
    log = RequestLog(recorder)
    before = time.perf_counter()
    log.selected("ws-1", "b1", 0.25, 2, 4, 0, None)  # a WebSocket's: no request row
    after = time.perf_counter()
    ((rid, backend, (at, wait, waiting, candidates, tried)),) = recorder.selections
    assert (rid, backend, wait, waiting, candidates, tried) == ("ws-1", "b1", 0.25, 2, 4, 0)
    assert before <= at <= after
    served = await answered("waited", backend=None)
    log.selected("waited", "b2", 0.1, 1, 4, 0, served)  # the first lease waited
    assert served.selection is not None
    assert served.selection[1:] == (0.1, 1, 4, 0)
    assert len(recorder.selections) == 1  # it goes out with the request's row
    served.backend = "b2"
    log.selected("waited", "b3", 0.2, 0, 4, 1, served)  # failed over: the earlier one now
    assert recorder.selections[-1][:2] == ("waited", "b2")
    assert recorder.selections[-1][2][1:] == (0.1, 1, 4, 0)
    assert served.selection[1:] == (0.2, 0, 4, 1)


async def test_a_burst_of_rows_resamples_at_once(tmp_path: Path) -> None:
    config = DebugConfig(enabled=True, dir=tmp_path, sample_above=10, flush_interval=0.5)
    recorder = DebugRecorder(config, queue_limit=1000, strategy="lru")
    assert recorder.burst == 10
    recorder.start()
    try:
        log = RequestLog(recorder)
        ends = []
        for n in range(10):
            served = await answered(f"r{n}")
            ends.append(time.perf_counter())
            log.finished("GET", "/v1/models", served, ends[-1] - served.started, 1)
            assert len(recorder.requests) == (n + 1) % 10  # flushed at the tenth
        after = time.perf_counter()
        # sampling set from the burst's rate: 10 requests since the first one ended
        assert recorder.every >= math.ceil(10 / (after - ends[0]) / 10 - 1e-9) > 1
    finally:
        recorder.stop()
    sampling = [s for s in lines(recorder, "session") if s["event"] == "sampling"]
    assert [s["every"] for s in sampling] == [recorder.every]
    assert len(lines(recorder, "requests")) == 10


async def record_all_kinds(log: RequestLog, recorder: DebugRecorder) -> None:
    """A streamed request, a broken stream, clients gone while streaming and while waiting,
    a slow request, a sampled-out stream, a lease that waited long and one in a full queue."""
    stream = await answered("stream", sse=True, body=b"data: {}\n\n")
    log.stream_started(stream)
    log.finished("POST", PATH, stream, 0.2, 2)
    broken = await answered("broken", sse=True, body=b"data: {", complete=False)
    broken.broken = "upstream_error"
    log.finished("POST", PATH, broken, 0.3, 2)
    left = await answered("left", sse=True, body=b"data: {}\n\n", complete=False)
    left.gone = True
    log.finished("POST", PATH, left, 0.4, 2)
    waiting = Recording(Client().send, "waiting", time.perf_counter())
    waiting.gone = True
    log.finished("POST", PATH, waiting, 0.6, 2)
    log.finished("POST", PATH, await answered("slow"), 1.5, 2)
    recorder.every = 50
    unsampled = await answered("unsampled-stream", sse=True, body=b"data: {}\n\n")
    log.finished("POST", PATH, unsampled, 0.01, 2)  # no row, but its stream line
    log.selected("queued", "b1", 0.75, 3, 2, 0, None)  # waited past slow_selection
    log.selected("crowded", "b1", 0.0, 8, 2, 0, None)  # 8 waiting: 0.8 of the queue limit


async def test_slow_streamed_and_abandoned_requests_write_their_events(
    recorder: DebugRecorder,
) -> None:
    recorder.start()
    await record_all_kinds(RequestLog(recorder), recorder)
    recorder.stop()

    requests = lines(recorder, "requests")
    assert [r["request_id"] for r in requests] == ["stream", "broken", "left", "waiting", "slow"]
    slow = requests[-1]
    assert (slow["status"], slow["duration_ms"], slow["backend"]) == (200, 1500.0, "b1")
    assert (slow["bytes"], slow["sample_weight"]) == (11, 1)
    assert 0 <= slow["ttfb_ms"] < 1000
    assert requests[3]["status"] == 499
    streams = [(s["request_id"], s["event"], s.get("reason")) for s in lines(recorder, "streams")]
    assert streams == [
        ("stream", "started", None),
        ("stream", "ended", "completed"),
        ("broken", "ended", "upstream_error"),
        ("left", "ended", "client_disconnected"),
        ("unsampled-stream", "ended", "completed"),
    ]
    ended = lines(recorder, "streams")[1]
    assert (ended["backend"], ended["duration_ms"], ended["bytes"]) == ("b1", 200.0, 10)
    disconnects = [
        (d["request_id"], d["phase"], d["elapsed_ms"], d["backend"])
        for d in lines(recorder, "disconnects")
    ]
    assert disconnects == [("left", "streaming", 400.0, "b1"), ("waiting", "waiting", 600.0, None)]
    stress = [(s["event_type"], s["request_id"]) for s in lines(recorder, "stress")]
    assert stress == [
        ("slow_request", "slow"),
        ("slow_selection", "queued"),
        ("queue_saturation", "crowded"),
    ]
    selections = lines(recorder, "engine_selection")
    leases = ["stream", "broken", "left", "slow", "queued", "crowded"]  # "waiting" got none
    assert [s["request_id"] for s in selections] == leases
    assert selections[-2]["wait_ms"] == 750.0
