"""The debug writer: flat lines with the common fields, 0600 files, drops counted, a quiet
log still written. Async tests: the writer flushes on the running loop."""

from __future__ import annotations

import asyncio
import datetime
import json
import os
import re
import signal
import stat
import time
from collections.abc import Callable
from pathlib import Path

from proxyfleet.debuglog.columns import Selection
from proxyfleet.debuglog.writer import DebugLog

STAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z$")


def _lines(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


async def test_lines_files_and_redaction(tmp_path: Path) -> None:
    log = DebugLog(tmp_path / "d", secret_fields=["org_token"])
    log.start(version="x")
    log.log(
        "requests",
        "rid-1",
        status=200,
        headers={"Authorization": "Bearer sk-abcdefgh123"},
        org_token="t0p",
        note="used Bearer abc",
    )
    log.stop()
    assert stat.S_IMODE((tmp_path / "d").stat().st_mode) == 0o700
    (line,) = _lines(log.path("requests"))
    assert list(line)[:4] == ["session_id", "timestamp", "elapsed_seconds", "request_id"]
    assert STAMP.match(str(line["timestamp"]))
    assert line["headers"] == {"Authorization": "[redacted]"}
    assert line["org_token"] == "[redacted]"
    assert line["note"] == "used Bearer [redacted]"
    assert stat.S_IMODE(log.path("requests").stat().st_mode) == 0o600
    session = _lines(log.path("session"))
    assert [s["event"] for s in session] == ["session_start", "session_end"]
    assert session[1]["entries_dropped"] == 0


async def test_a_full_queue_drops_and_counts(tmp_path: Path) -> None:
    log = DebugLog(tmp_path, queue_limit=5, flush_interval=60)
    log.start()  # the session_start entry takes one place
    for n in range(10):
        log.log("requests", f"r{n}")
    assert log.dropped == 6
    log.stop()
    assert len(_lines(log.path("requests"))) == 4
    assert _lines(log.path("session"))[-1]["entries_dropped"] == 6


def _request_row(
    log: DebugLog,
    rid: str,
    path: str,
    backend: str | None,
    lease: Selection | None,
    weight: int = 1,
) -> None:
    now = time.perf_counter()
    log.requests.append(
        (rid, "POST", path, backend, 200, now - 0.25, 0.25, 42, now - 0.2, lease, weight)
    )


async def test_request_rows_become_request_and_selection_lines(tmp_path: Path) -> None:
    log = DebugLog(tmp_path, strategy="least_busy", flush_interval=0.05)
    log.start()
    before = time.time_ns()
    lease = (time.perf_counter() - 0.24, 0.01, 2, 8, 1)
    _request_row(log, "r-1", "/v1/chat/completions", "b003", lease)
    _request_row(log, "r-2", "/v1/models/sk-abcdefgh12345", None, None, weight=8)
    _request_row(log, "r-3", '/v1/caf\u00e9/\u6f22\u5b57/nul\x00/"quoted"', None, None)
    log.selections.append(("r-1", "b001", (time.perf_counter() - 0.245, 0, 0, 8, 0)))  # failed over
    log.stop()
    first, second, third = _lines(log.path("requests"))
    assert first["request_id"] == "r-1"
    assert first["status"] == 200
    assert first["bytes"] == 42
    assert (first["duration_ms"], first["ttfb_ms"], first["backend"]) == (250.0, 50.0, "b003")
    stamp = datetime.datetime.fromisoformat(str(first["timestamp"]).replace("Z", "+00:00"))
    assert abs(stamp.timestamp() * 1e9 - before) < 0.5e9  # perf-counter times on the wall clock
    assert second["backend"] is None
    assert (first["sample_weight"], second["sample_weight"]) == (1, 8)
    assert second["path"] == "/v1/models/sk-[redacted]"
    assert third["path"] == '/v1/caf\u00e9/\u6f22\u5b57/nul\x00/"quoted"'
    selections = _lines(log.path("engine_selection"))
    assert [(s["backend"], s["attempt"]) for s in selections] == [("b003", 1), ("b001", 0)]
    assert selections[0]["strategy"] == "least_busy"
    assert selections[0]["wait_ms"] == 10.0
    assert (selections[0]["queue_depth"], selections[0]["candidates"]) == (2, 8)
    end = _lines(log.path("session"))[-1]
    assert (end["entries_written"], end["entries_dropped"]) == (5, 0)


async def test_rows_past_the_limit_are_dropped_and_counted(tmp_path: Path) -> None:
    log = DebugLog(tmp_path, queue_limit=3, flush_interval=60)
    log.start()
    for n in range(5):
        _request_row(log, f"r{n}", "/p", "b", None)
    log.stop()
    assert [line["request_id"] for line in _lines(log.path("requests"))] == ["r0", "r1"]
    assert _lines(log.path("session"))[-1]["entries_dropped"] == 3  # with session_start: 3 kept


async def test_the_encoder_outlives_sigterm_and_a_killed_one_is_replaced(tmp_path: Path) -> None:
    log = DebugLog(tmp_path, flush_interval=0.05)
    log.start()
    first = log.encoder_pid
    assert first is not None
    await _wait_for(lambda: log.path("session").exists())  # it runs: its handlers are in place
    os.kill(first, signal.SIGTERM)  # ignored: only the end of its input stops it
    log.log("errors", "r-0", error_type="X")
    await _wait_for(lambda: log.path("errors").exists())
    os.kill(first, signal.SIGKILL)
    await _wait_for(lambda: _gone(first))
    log.log("errors", "r-1", error_type="Y")
    await _wait_for(lambda: log.encoder_pid not in (None, first))
    log.log("errors", "r-2", error_type="Z")
    log.stop()
    ids = [line["request_id"] for line in _lines(log.path("errors"))]
    assert ids[0] == "r-0"
    assert ids[-1] == "r-2"
    end = _lines(log.path("session"))[-1]
    assert end["entries_dropped"] == 3 - len(ids)


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    status = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    return status == "Z"


async def _wait_for(check: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)  # the flush timer runs meanwhile


async def test_a_quiet_log_still_writes_what_comes_in_later(tmp_path: Path) -> None:
    log = DebugLog(tmp_path, flush_interval=0.01)
    log.start()
    await _wait_for(lambda: log.path("session").exists())
    await asyncio.sleep(1.5)  # nothing recorded: the timer backs off to once a second
    log.log("errors", "r-quiet", error_type="X")
    await _wait_for(lambda: log.path("errors").exists(), timeout=3.0)
    log.stop()
    assert [line["request_id"] for line in _lines(log.path("errors"))] == ["r-quiet"]
