"""The debug recorder: each category written to its file by the real encoder, stress events
once per window, the thresholds it derives from the config, and sampling (``every`` from the
rate of requests, its start and stop noted in the session file). Async tests: the writer
flushes on the running loop."""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from proxyfleet.config.model import DebugConfig
from proxyfleet.debuglog.recorder import DebugRecorder


def config(tmp_path: Path, **values: Any) -> DebugConfig:
    return DebugConfig(enabled=True, dir=tmp_path / "debug", **{"flush_interval": 60, **values})


Make = Callable[..., DebugRecorder]


@pytest.fixture
async def make(tmp_path: Path) -> AsyncIterator[Make]:
    """``make(queue_limit, strategy, **config)``: a recorder, stopped at the end of the test
    should the test fail before it stops it (stopping again is a no-op)."""
    made: list[DebugRecorder] = []

    def build(queue_limit: int = 100, strategy: str = "", **values: Any) -> DebugRecorder:
        made.append(DebugRecorder(config(tmp_path, **values), queue_limit, strategy))
        return made[-1]

    yield build
    for recorder in made:
        recorder.stop()


def lines(recorder: DebugRecorder, category: str) -> list[dict[str, Any]]:
    path = recorder.log.path(category)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_what_it_derives_from_the_config(tmp_path: Path) -> None:
    recorder = DebugRecorder(
        config(tmp_path, slow_request=3.0, slow_selection=0.5, sample_above=50, flush_interval=2),
        queue_limit=200,
        strategy="lru",
    )
    assert recorder.fast == 0.5  # an ordinary request is within both thresholds
    assert (recorder.slow_request, recorder.slow_selection) == (3.0, 0.5)
    assert recorder.saturated == pytest.approx(160)  # 0.8 of the queue limit
    assert recorder.burst == 200  # twice what a flush interval holds at the sampled rate
    assert (recorder.every, recorder.unrecorded) == (1, 0)
    assert recorder.requests is recorder.log.requests  # the gateway appends to the log's lists
    assert recorder.selections is recorder.log.selections
    assert recorder.log.strategy == "lru"
    unlimited = DebugRecorder(config(tmp_path, sample_above=0), queue_limit=0, strategy="")
    assert unlimited.saturated == math.inf
    assert unlimited.burst == math.inf


async def test_every_category_goes_to_its_file(make: Make) -> None:
    recorder = make(100, "round-robin")
    recorder.start(backends=3, selection="round-robin")
    recorder.stream("r-1", "started", "b1")
    recorder.stream("r-1", "ended", "b1", reason="completed", duration_ms=12.0)
    recorder.stream("r-1", "reported_started", None, status=200)
    recorder.error("r-2", "gateway", "forward", ConnectionResetError("peer reset"), backend="b2")
    recorder.error(None, "orchestrator", "status", TimeoutError())
    recorder.disconnect("r-3", "waiting", 1.23456, None)
    recorder.provisioning("r-4", "provision_success", 0.5, True, backend="e1")
    recorder.provisioning(None, "release", 0.012, True)
    recorder.orchestrator_health(0.0042, status="healthy", can_provision=True, engines=2)
    recorder.stop()

    (start, end) = lines(recorder, "session")
    assert (start["event"], start["backends"], start["selection"]) == (
        "session_start",
        3,
        "round-robin",
    )
    assert end["event"] == "session_end"
    assert end["requests_unrecorded"] == 0
    assert end["entries_dropped"] == 0
    assert end["entries_written"] == 10  # the 9 entries above and session_start

    streams = lines(recorder, "streams")
    assert [(s["request_id"], s["event"], s["backend"]) for s in streams] == [
        ("r-1", "started", "b1"),
        ("r-1", "ended", "b1"),
        ("r-1", "reported_started", None),
    ]
    assert (streams[1]["reason"], streams[1]["duration_ms"]) == ("completed", 12.0)
    assert streams[2]["status"] == 200

    first, second = lines(recorder, "errors")
    assert {k: first[k] for k in list(first)[3:]} == {
        "request_id": "r-2",
        "component": "gateway",
        "operation": "forward",
        "error_type": "ConnectionResetError",
        "error_message": "peer reset",
        "backend": "b2",
    }
    assert "request_id" not in second
    assert (second["error_type"], second["error_message"]) == ("TimeoutError", "")

    (gone,) = lines(recorder, "disconnects")
    assert (gone["request_id"], gone["phase"], gone["elapsed_ms"], gone["backend"]) == (
        "r-3",
        "waiting",
        1234.56,
        None,
    )

    success, release = lines(recorder, "provisioning")
    assert {k: success[k] for k in list(success)[3:]} == {
        "request_id": "r-4",
        "operation": "provision_success",
        "duration_ms": 500.0,
        "success": True,
        "error": None,
        "retry": 0,
        "backend": "e1",
    }
    assert (release["operation"], release["duration_ms"]) == ("release", 12.0)

    (health,) = lines(recorder, "orchestrator_health")
    assert (health["duration_ms"], health["status"], health["engines"]) == (4.2, "healthy", 2)
    assert lines(recorder, "stress") == []  # a healthy orchestrator is no stress

    for category in ("session", "streams", "errors", "disconnects", "provisioning"):
        for line in lines(recorder, category):
            assert list(line)[:3] == ["session_id", "timestamp", "elapsed_seconds"]
            assert line["session_id"] == recorder.log.session_id


async def test_stress_events_once_per_window_with_their_request(make: Make) -> None:
    recorder = make(
        10,
        "lru",
        slow_request=1.0,
        slow_selection=0.5,
        slow_requests_per_window=2,
        provisioning_failures_per_window=2,
    )
    recorder.start()
    for n in range(4):
        recorder.slow(f"slow-{n}", 1.5 + n)
    recorder.pressure("wait-1", 0.75, 1)
    recorder.pressure("wait-2", 0.9, 1)  # the same window: not again
    recorder.pressure("full-1", 0.0, 8)  # 8 of 10 waiting
    recorder.no_healthy_backend("r-none", 4)
    recorder.no_healthy_backend("r-none-again", 4)
    for n in range(3):
        recorder.provisioning(None, "provision_attempt_failed", 0.1, False, "HTTP 500", retry=n)
    recorder.provisioning(None, "provision_failed", 0.3, False, "gave up")  # not an attempt
    recorder.breaker_open("orchestrator", 5)
    recorder.orchestrator_health(0.01, status="unavailable", blocked_reason="VPN is disconnected")
    recorder.orchestrator_health(0.01, status="degraded")  # the same window
    recorder.stop()

    stress = lines(recorder, "stress")
    assert [(s["event_type"], s["severity"], s.get("request_id")) for s in stress] == [
        ("slow_request", "warning", "slow-0"),
        ("high_slow_request_rate", "critical", "slow-2"),
        ("slow_selection", "warning", "wait-1"),
        ("queue_saturation", "critical", "full-1"),
        ("all_backends_unhealthy", "critical", "r-none"),
        ("high_provisioning_failure_rate", "critical", None),
        ("provisioning_circuit_breaker", "critical", None),
        ("orchestrator_degraded", "critical", None),
    ]
    by_type = {s["event_type"]: s for s in stress}
    assert by_type["slow_request"]["duration_seconds"] == 1.5
    assert by_type["slow_request"]["example_request_id"] == "slow-0"
    assert by_type["high_slow_request_rate"]["count"] == 3
    assert by_type["queue_saturation"]["waiting"] == 8
    assert by_type["queue_saturation"]["queue_limit"] == 10
    assert by_type["all_backends_unhealthy"]["backends"] == 4
    assert by_type["high_provisioning_failure_rate"]["count"] == 3
    assert by_type["provisioning_circuit_breaker"]["consecutive_failures"] == 5
    assert by_type["orchestrator_degraded"]["description"] == (
        "orchestrator is unavailable: VPN is disconnected"
    )
    assert by_type["orchestrator_degraded"]["blocked_reason"] == "VPN is disconnected"
    assert len(lines(recorder, "provisioning")) == 4  # every attempt has its line
    assert len(lines(recorder, "orchestrator_health")) == 2


def row(rid: str, weight: int, ended: float | None = None) -> tuple[Any, ...]:
    end = time.perf_counter() if ended is None else ended
    return (rid, "POST", "/v1/responses", "b1", 200, end - 0.001, 0.001, 10, 0.0, None, weight)


class Clock:
    """Brackets the recorder's own clock reading at each resample: it happens between the
    readings before and after the call."""

    def __init__(self, recorder: DebugRecorder) -> None:
        self.recorder = recorder
        self.before = self.after = time.perf_counter()

    def resample(self) -> tuple[float, float]:
        """Resample now; the bounds of the seconds since the last resample."""
        before = time.perf_counter()
        self.recorder.resample()
        after = time.perf_counter()
        bounds = (before - self.after, after - self.before)
        self.before, self.after = before, after
        return bounds


def every_for(requests: int, seconds: float, sample_above: float) -> int:
    return max(1, math.ceil(requests / seconds / sample_above - 1e-9))


async def test_every_follows_the_rate_and_the_session_file_says_so(make: Make) -> None:
    recorder = make(10_000, sample_above=10)
    recorder.start()
    clock = Clock(recorder)
    clock.resample()  # a quiet start: nothing since
    assert recorder.every == 1
    seen, recorded = [], 0
    for target in (20, 26, 80):  # on, a small change (not noted), a big one (noted)
        await asyncio.sleep(0.2)
        since_last = time.perf_counter() - clock.after
        weight = round(target * 10 * since_last)
        recorder.requests.extend(row(f"r{target}-{n}", weight // 4) for n in range(4))
        recorded += 4 * (weight // 4)
        recorder.unrecorded += weight - 4 * (weight // 4)  # the rest: counted, not recorded
        shortest, longest = clock.resample()
        assert every_for(weight, longest, 10) <= recorder.every <= every_for(weight, shortest, 10)
        assert recorder.requests == []  # the rows went out with that flush
        seen.append(recorder.every)
    await asyncio.sleep(0.05)
    clock.resample()  # nothing since: the rate is 0
    assert recorder.every == 1
    recorder.stop()

    assert all(abs(every - t) <= 2 for every, t in zip(seen, (20, 26, 80), strict=True))
    notes = [s for s in lines(recorder, "session") if s["event"].startswith("sampling")]
    assert [(n["event"], n["every"]) for n in notes] == [
        ("sampling", seen[0]),
        ("sampling", seen[2]),
        ("sampling_stopped", 1),
    ]
    assert all(n["sample_above"] == 10 for n in notes)
    assert notes[0]["requests_per_second"] == pytest.approx(seen[0] * 10, rel=0.1)
    assert sum(r["sample_weight"] for r in lines(recorder, "requests")) == recorded


async def test_a_burst_is_timed_from_the_end_of_its_first_request(make: Make) -> None:
    """After a quiet spell the last resample may be long ago: a burst's rate is counted from
    when its first request ended, not from then."""
    recorder = make(1000, sample_above=10, flush_interval=0.5)
    assert recorder.burst == 10
    recorder.start()
    await asyncio.sleep(0.4)  # quiet since the recorder was made
    first_end = time.perf_counter() - 0.1
    recorder.requests.extend(row(f"b{n}", 1, ended=first_end) for n in range(10))
    before = time.perf_counter()
    recorder.resample()
    after = time.perf_counter()
    recorder.stop()
    shortest, longest = before - first_end, after - first_end  # about 0.1 s
    # timed from the recorder's start (0.5 s ago) it would be a fifth of that
    assert every_for(10, longest, 10) <= recorder.every <= every_for(10, shortest, 10)


async def test_no_sampling_when_sample_above_is_zero(make: Make) -> None:
    recorder = make(100_000, sample_above=0)
    recorder.start()
    recorder.requests.extend(row(f"r{n}", 1) for n in range(5000))
    recorder.resample()
    assert recorder.every == 1
    recorder.stop()
    assert len(lines(recorder, "requests")) == 5000
    assert [s["event"] for s in lines(recorder, "session")] == ["session_start", "session_end"]


async def test_stop_counts_the_requests_no_row_stands_for(make: Make) -> None:
    recorder = make()
    recorder.start()
    recorder.unrecorded = 3
    recorder.stop(reason="shutdown")
    end = lines(recorder, "session")[-1]
    assert (end["event"], end["requests_unrecorded"], end["reason"]) == (
        "session_end",
        3,
        "shutdown",
    )
