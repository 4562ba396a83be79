"""The debug encoder as the real process the writer starts (``python -m
proxyfleet.debuglog.encoder``, frames on its stdin): lines and their common fields, 0600 files
appended to, redaction of secrets, bad frames and failed writes counted rather than fatal, the
end of input as the only way to stop it."""

from __future__ import annotations

import json
import marshal
import os
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import orjson

from proxyfleet.debuglog.encoder import FRAME
from tests.conftest import cli_env

SESSION = "20261122_014500"
START_NS = 1_700_000_000_000_000_000  # 2023-11-14T22:13:20Z
ANCHOR = (START_NS, 1000.0)  # that wall-clock time is perf_counter() 1000.0


def frame(
    entries: Iterable[list[Any]] = (),
    requests: Iterable[tuple[Any, ...]] = (),
    selections: Iterable[tuple[Any, ...]] = (),
    strategy: str = "lru",
    anchor: tuple[int, float] = ANCHOR,
) -> bytes:
    """One frame as DebugLog sends it: length, then marshal data."""
    data = marshal.dumps(
        {
            "anchor": anchor,
            "strategy": strategy,
            "requests": list(requests),
            "selections": list(selections),
            "entries": orjson.dumps(list(entries)),
        }
    )
    return raw(data)


def raw(data: bytes) -> bytes:
    return FRAME.pack(len(data)) + data


def command(directory: Path, *secret_fields: str) -> list[str]:
    args = [sys.executable, "-m", "proxyfleet.debuglog.encoder", "--dir", str(directory)]
    args += ["--session", SESSION, "--start-ns", str(START_NS)]
    for name in secret_fields:
        args += ["--secret-field", name]
    return args


def encode(
    directory: Path, frames: Iterable[bytes], *secret_fields: str
) -> subprocess.CompletedProcess[bytes]:
    directory.mkdir(exist_ok=True)
    return subprocess.run(
        command(directory, *secret_fields),
        input=b"".join(frames),
        capture_output=True,
        timeout=30,
        env=cli_env(),
        check=False,
    )


def lines(directory: Path, category: str) -> list[dict[str, Any]]:
    path = directory / f"{SESSION}_{category}.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def entry(category: str, ns: int, rid: str | None, **fields: Any) -> list[Any]:
    return [category, ns, rid, fields]


def session_end(written: int) -> list[Any]:
    """The last entry, as DebugLog.stop sends it: what was sent, what it dropped itself."""
    fields = {"event": "session_end", "entries_written": written, "entries_dropped": 0}
    return entry("session", START_NS, None, **fields)


def test_entries_become_lines_with_the_common_fields_first(tmp_path: Path) -> None:
    ns = START_NS + 1_500_000_123  # 1.500000123 s into the session
    result = encode(
        tmp_path,
        [
            frame([entry("session", START_NS, None, event="session_start", backends=2)]),
            frame(
                [
                    entry("errors", ns, "r-1", component="gateway", error_type="X", n=[1, 2]),
                    entry("streams", ns, "r-2", event="started", backend=None),
                ]
            ),
        ],
    )
    assert result.returncode == 0, result.stderr
    (start,) = lines(tmp_path, "session")
    assert start == {
        "session_id": SESSION,
        "timestamp": "2023-11-14T22:13:20.000000000Z",
        "elapsed_seconds": 0.0,
        "event": "session_start",
        "backends": 2,
    }
    assert "request_id" not in start  # none: not written as null
    (error,) = lines(tmp_path, "errors")
    assert list(error) == [
        "session_id",
        "timestamp",
        "elapsed_seconds",
        "request_id",
        "component",
        "error_type",
        "n",
    ]
    assert error["timestamp"] == "2023-11-14T22:13:21.500000123Z"
    assert error["elapsed_seconds"] == 1.5
    assert (error["request_id"], error["n"]) == ("r-1", [1, 2])
    (stream,) = lines(tmp_path, "streams")
    assert stream["backend"] is None
    for path in tmp_path.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_an_entry_without_fields_is_still_a_line(tmp_path: Path) -> None:
    assert encode(tmp_path, [frame([entry("errors", START_NS, "r")])]).returncode == 0
    assert lines(tmp_path, "errors") == [
        {
            "session_id": SESSION,
            "timestamp": "2023-11-14T22:13:20.000000000Z",
            "elapsed_seconds": 0.0,
            "request_id": "r",
        }
    ]


def test_rows_put_on_the_wall_clock_by_the_anchor(tmp_path: Path) -> None:
    request = ("r-1", "POST", "/v1/responses", "b1", 200, 1000.25, 0.5, 42, 1000.3, None, 1)
    # the same perf_counter times, sent with a later anchor: one second later on the wall clock
    later = (START_NS + 1_000_000_000, 1000.0)
    result = encode(tmp_path, [frame(requests=[request]), frame(requests=[request], anchor=later)])
    assert result.returncode == 0, result.stderr
    first, second = lines(tmp_path, "requests")
    assert first["timestamp"] == "2023-11-14T22:13:20.750000000Z"  # when it ended
    assert second["timestamp"] == "2023-11-14T22:13:21.750000000Z"
    assert (first["duration_ms"], first["ttfb_ms"]) == (500.0, 50.0)


def test_files_are_appended_to_by_a_later_encoder(tmp_path: Path) -> None:
    """A replacement encoder (the first one died) carries on with the same files."""
    for rid in ("first", "second"):
        assert encode(tmp_path, [frame([entry("errors", START_NS, rid)])]).returncode == 0
    assert [line["request_id"] for line in lines(tmp_path, "errors")] == ["first", "second"]


def test_secrets_are_redacted(tmp_path: Path) -> None:
    fields = {
        "headers": {
            "Authorization": "Bearer abc.def",
            "X-API-Key": "k-123",
            "Cookie": "session=1",
            "Accept": "text/event-stream",
        },
        "Org_Token": "configured by name",
        "nested": [{"password": "p"}, "Bearer tok-xyz", "plain text"],
        "note": "upstream said: invalid key sk-abcdefghijklmn for Bearer q1w2e3",
        "count": 3,
    }
    request = ("r", "GET", "/v1/models/sk-abcdefgh12345", "sk-backendsecret1", 200)
    request += (1000.0, 0.1, 1, 0.0, (1000.0, 0.0, 0, 1, 0), 1)
    result = encode(
        tmp_path,
        [frame([entry("errors", START_NS, "r", **fields)], requests=[request])],
        "org_token",
    )
    assert result.returncode == 0, result.stderr
    (line,) = lines(tmp_path, "errors")
    assert line["headers"] == {
        "Authorization": "[redacted]",
        "X-API-Key": "[redacted]",
        "Cookie": "[redacted]",
        "Accept": "text/event-stream",
    }
    assert line["Org_Token"] == "[redacted]"  # --secret-field, whatever the case
    assert line["nested"] == [{"password": "[redacted]"}, "Bearer [redacted]", "plain text"]
    assert line["note"] == "upstream said: invalid key sk-[redacted] for Bearer [redacted]"
    assert line["count"] == 3
    (row,) = lines(tmp_path, "requests")
    assert row["path"] == "/v1/models/sk-[redacted]"
    assert row["backend"] == "sk-[redacted]"
    (selection,) = lines(tmp_path, "engine_selection")
    assert selection["backend"] == "sk-[redacted]"
    written = "".join(p.read_text() for p in tmp_path.iterdir())
    for secret in ("abc.def", "k-123", "session=1", "configured", "tok-xyz", "q1w2e3", "abcdefgh"):
        assert secret not in written


def test_bad_frames_are_counted_not_fatal(tmp_path: Path) -> None:
    good = entry("errors", START_NS, "good-1")
    short_row = ("r", "GET", "/p", None, 200)  # not a RequestRow: 5 values, not 11
    result = encode(
        tmp_path,
        [
            frame([good]),
            frame([entry("errors", START_NS, "lost")], requests=[short_row, short_row]),
            raw(marshal.dumps(["not", "a", "frame"])),
            frame([entry("errors", START_NS, "good-2")]),
            frame([session_end(7), entry("errors", START_NS, "good-3")]),
        ],
    )
    assert result.returncode == 0
    assert result.stderr.count(b"a batch was lost") == 2
    assert [line["request_id"] for line in lines(tmp_path, "errors")] == [
        "good-1",
        "good-2",
        "good-3",
    ]
    assert not (tmp_path / f"{SESSION}_requests.jsonl").exists()
    (end,) = lines(tmp_path, "session")
    # the 3 entries of the bad frame (2 rows, 1 entry) were sent but not written
    assert (end["entries_written"], end["entries_dropped"]) == (4, 3)


def test_a_torn_last_frame_is_the_end_of_input(tmp_path: Path) -> None:
    whole = frame([entry("errors", START_NS, "kept")])
    torn = frame([entry("errors", START_NS, "torn")])[:-3]
    result = encode(tmp_path, [whole, torn])
    assert result.returncode == 0
    assert b"proxyfleet debug encoder" not in result.stderr
    assert b"Traceback" not in result.stderr
    assert [line["request_id"] for line in lines(tmp_path, "errors")] == ["kept"]


def test_a_file_that_cannot_be_written_loses_only_its_lines(tmp_path: Path) -> None:
    (tmp_path / f"{SESSION}_errors.jsonl").mkdir()  # cannot be opened for writing
    result = encode(
        tmp_path,
        [
            frame([entry("errors", START_NS, "e1"), entry("streams", START_NS, "s1")]),
            frame([entry("errors", START_NS, "e2"), entry("streams", START_NS, "s2")]),
            frame([session_end(5)]),
        ],
    )
    assert result.returncode == 0
    assert result.stderr.count(b"proxyfleet debug encoder:") == 1  # said once
    assert [line["request_id"] for line in lines(tmp_path, "streams")] == ["s1", "s2"]
    (end,) = lines(tmp_path, "session")
    assert (end["entries_written"], end["entries_dropped"]) == (3, 2)


def test_lines_lost_in_the_last_frame_are_counted_in_session_end(tmp_path: Path) -> None:
    (tmp_path / f"{SESSION}_errors.jsonl").mkdir()
    end = session_end(2)
    result = encode(tmp_path, [frame([entry("errors", START_NS, "e1"), end])])
    assert result.returncode == 0
    (line,) = lines(tmp_path, "session")
    assert (line["entries_written"], line["entries_dropped"]) == (1, 1)


def test_a_frame_that_does_not_unmarshal_is_skipped(tmp_path: Path) -> None:
    result = encode(
        tmp_path,
        [raw(b"\xff\xff\xff\xff"), frame([entry("errors", START_NS, "after")])],
    )
    assert result.returncode == 0
    assert [line["request_id"] for line in lines(tmp_path, "errors")] == ["after"]


def test_the_encoder_says_nothing_on_stderr_when_all_is_well(tmp_path: Path) -> None:
    result = encode(tmp_path, [frame([entry("errors", START_NS, "r")])])
    assert result.returncode == 0
    assert result.stderr == b""


def test_only_the_end_of_input_stops_it_and_it_runs_at_nice_10(tmp_path: Path) -> None:
    process = subprocess.Popen(
        command(tmp_path),
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=cli_env(),
    )
    assert process.stdin is not None
    try:
        process.stdin.write(frame([entry("errors", START_NS, "before")]))
        process.stdin.flush()
        path = tmp_path / f"{SESSION}_errors.jsonl"
        deadline = time.monotonic() + 10
        while not path.exists():  # it wrote: its signal handlers are in place
            assert time.monotonic() < deadline, "the encoder wrote nothing"
            time.sleep(0.02)
        assert os.getpriority(os.PRIO_PROCESS, process.pid) == min(os.nice(0) + 10, 19)
        for number in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            process.send_signal(number)
        time.sleep(0.1)
        assert process.poll() is None  # all three ignored
        process.stdin.write(frame([entry("errors", START_NS, "after")]))
        process.stdin.close()
        assert process.wait(10) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(5)
    assert [line["request_id"] for line in lines(tmp_path, "errors")] == ["before", "after"]
