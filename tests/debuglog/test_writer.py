"""The debug writer: flat lines with the common fields, 0600 files, drops counted."""

from __future__ import annotations

import json
import re
import stat
from pathlib import Path

from proxyfleet.debuglog.writer import DebugLog

STAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z$")


def _lines(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_lines_files_and_redaction(tmp_path: Path) -> None:
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


def test_a_full_queue_drops_and_counts(tmp_path: Path) -> None:
    log = DebugLog(tmp_path, queue_limit=5, flush_interval=60)
    log.start()  # the session_start entry takes one place
    for n in range(10):
        log.log("requests", f"r{n}")
    assert log.dropped == 6
    log.stop()
    assert len(_lines(log.path("requests"))) == 4
    assert _lines(log.path("session"))[-1]["entries_dropped"] == 6
