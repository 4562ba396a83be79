"""``proxyfleet debug summary|tail|correlate`` through the real CLI, on debug logs written in
tmp_path as debug mode writes them (``<session>_<category>.jsonl``): what each prints, exit
codes, and the errors for a missing directory, a bad ``--within`` and bad arguments."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import cli_env, run_cli

SESSION = "20261122_014500"
OTHER = "20261122_014501"


def _at(seconds: float) -> str:
    """The timestamp ``seconds`` after 2026-11-22 01:45:00 UTC, as debug mode writes it."""
    minutes, rest = divmod(seconds, 60)
    return f"2026-11-22T01:{45 + int(minutes):02d}:{rest:012.9f}Z"


def _line(session: str, seconds: float, request_id: str | None = None, **data: Any) -> str:
    entry = {"session_id": session, "timestamp": _at(seconds), "elapsed_seconds": seconds}
    if request_id is not None:
        entry["request_id"] = request_id
    return json.dumps({**entry, **data}) + "\n"


def _write(directory: Path, session: str, category: str, *lines: str, torn: str = "") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{session}_{category}.jsonl"
    path.write_text("".join(lines) + torn)
    return path


@pytest.fixture
def gateway(tmp_path: Path) -> Path:
    """A gateway's debug logs: one session, four categories, a torn last line."""
    d = tmp_path / "gateway"
    _write(
        d,
        SESSION,
        "session",
        _line(SESSION, 0, event="session_start"),
        _line(SESSION, 10, event="session_end", entries_dropped=2, requests_unrecorded=1),
    )

    def request(t: float, rid: str, status: int, ms: float, path: str, **extra: Any) -> str:
        return _line(
            SESSION, t, rid, method="POST", path=path, status=status, duration_ms=ms, **extra
        )

    _write(
        d,
        SESSION,
        "requests",
        request(1, "r1", 200, 12.5, "/v1/chat/completions", backend="k1"),
        request(2, "r2", 502, 950.0, "/v1/responses", backend="k2", sample_weight=5),
        request(3, "r3", 200, 40.0, "/v1/models", backend="k1"),
        torn='{"session_id": "' + SESSION + '", "timest',  # a live file, mid-write
    )
    _write(
        d,
        SESSION,
        "stress",
        _line(
            SESSION,
            5,
            severity="warning",
            event_type="slow_request",
            description="a request took 6s",
        ),
    )
    _write(
        d,
        SESSION,
        "errors",
        _line(SESSION, 2.5, "r2", error_type="UpstreamTimeout", component="upstream"),
        _line(SESSION, 4, error_type="UpstreamTimeout"),
        _line(SESSION, 6, error_type="UpstreamClosed"),
    )
    (d / "notes.txt").write_text("not a log\n")
    return d


@pytest.fixture
def upstream(tmp_path: Path) -> Path:
    """The other system's logs: one entry shares r2, one is 300 ms from the stress event."""
    d = tmp_path / "upstream"
    _write(
        d,
        OTHER,
        "requests",
        _line(OTHER, 2.1, "r2", method="POST", path="/v1/responses", status=502),
        _line(OTHER, 5.3, event="engine_hiccup"),
        _line(OTHER, 40, event="far_away"),
    )
    _write(d, OTHER, "session", _line(OTHER, 4.1, event="session_start"))
    return d


def _ok(*args: str) -> list[str]:
    result = run_cli("debug", *args)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    return result.stdout.splitlines()


# -- summary --------------------------------------------------------------------------------


def test_summary_counts_slowest_stress_and_errors(gateway: Path) -> None:
    out = _ok("summary", str(gateway))
    assert out[0] == f"sessions: {SESSION}"
    assert out[1] == "from 2026-11-22 01:45:00 to 01:45:10 UTC (10.0s)"
    counts = {
        line.split()[0]: line.split()[1]
        for line in out[out.index("entries:") + 1 :]
        if line.startswith("  ") and not line.startswith("  (sampled)")
    }
    assert {k: counts[k] for k in ("errors", "requests", "session", "stress", "(dropped)")} == {
        "errors": "3",
        "requests": "3",  # the torn line is skipped
        "session": "2",
        "stress": "1",
        "(dropped)": "2",
    }
    # 1 + 5 + 1 by their weights, and 1 unrecorded after the last line
    assert any("3 request lines stand for 8 requests" in line for line in out)
    slowest = out[out.index("slowest requests (of 3):") + 1 :][:3]
    assert [line.split()[0] for line in slowest] == ["950.0", "40.0", "12.5"]
    assert "backend=k2  request_id=r2" in slowest[0]
    assert "  01:45:05.000000  warning  slow_request: a request took 6s" in out
    assert out[-1] == "errors: UpstreamTimeout × 2, UpstreamClosed × 1"


def test_summary_slowest_limit(gateway: Path) -> None:
    out = _ok("summary", str(gateway), "--slowest", "1")
    first = out.index("slowest requests (of 3):")
    assert out[first + 1].split()[0] == "950.0"
    assert out[first + 2] == ""  # only one


def test_summary_of_several_sessions(gateway: Path) -> None:
    _write(gateway, OTHER, "requests", _line(OTHER, 20, "r9", duration_ms=1.0, status=200))
    out = _ok("summary", str(gateway))
    assert out[0] == f"sessions: {SESSION}, {OTHER}"
    assert "(20.0s)" in out[1]


def test_summary_of_an_empty_directory(tmp_path: Path) -> None:
    assert _ok("summary", str(tmp_path)) == ["no entries"]


def test_summary_without_stress_or_errors(tmp_path: Path) -> None:
    _write(tmp_path, SESSION, "requests", _line(SESSION, 1, "r1", duration_ms=3, status=200))
    out = _ok("summary", str(tmp_path))
    assert "stress timeline: none" in out
    assert not any(line.startswith("errors:") for line in out)
    assert not any("(sampled)" in line for line in out)  # every request has its line


# -- tail -----------------------------------------------------------------------------------


def test_tail_shows_the_latest_entries_merged_by_time(gateway: Path) -> None:
    assert _ok("tail", str(gateway), "-n", "3") == [
        "stress: severity=warning event_type=slow_request description=a request took 6s",
        "errors: error_type=UpstreamClosed",
        "session: event=session_end entries_dropped=2 requests_unrecorded=1",
    ]
    everything = _ok("tail", str(gateway), "-n", "100")
    assert len(everything) == 9  # every entry, the torn one aside
    assert everything[0] == "session: event=session_start"


def test_tail_categories(gateway: Path) -> None:
    out = _ok("tail", str(gateway), "--category", "errors", "--category", "stress")
    assert [line.split(":")[0] for line in out] == ["errors", "errors", "stress", "errors"]
    assert _ok("tail", str(gateway), "--category", "nothing-like-it") == []


def test_tail_zero_lines(gateway: Path) -> None:
    assert _ok("tail", str(gateway), "-n", "0") == []


def _follow(directory: Path, *flags: str) -> tuple[subprocess.Popen[bytes], Path]:
    out = directory.parent / "follow.out"
    with out.open("wb") as handle:
        proc = subprocess.Popen(
            [sys.executable, "-m", "proxyfleet", "debug", "tail", str(directory), *flags],
            stdout=handle,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=cli_env(),
        )
    return proc, out


def _wait_for(out: Path, text: str, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 10
    while text not in out.read_text():
        assert proc.poll() is None, out.read_text()
        assert time.monotonic() < deadline, out.read_text()
        time.sleep(0.02)


def test_tail_follow_prints_new_entries_then_stops(gateway: Path) -> None:
    stress = gateway / f"{SESSION}_stress.jsonl"
    proc, out = _follow(gateway, "-n", "1", "-f", "--for", "2", "--category", "stress")
    try:
        _wait_for(out, "slow_request", proc)  # the tail, printed before following
        time.sleep(0.3)
        with stress.open("a") as handle:
            handle.write(_line(SESSION, 11, severity="critical", event_type="queue_")[:-1])
            handle.flush()
            time.sleep(0.4)  # half a line is never printed
            assert "queue_" not in out.read_text()
            handle.write("\n")
        _write(gateway, OTHER, "errors", _line(OTHER, 12, error_type="NotFollowed"))
        _wait_for(out, "event_type=queue_", proc)
        assert proc.wait(10) == 0  # --for ends it
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
    text = out.read_text()
    assert "severity=critical event_type=queue_" in text
    assert text.count("event_type=queue_") == 1
    assert "NotFollowed" not in text  # not a category asked for


def test_tail_follow_does_not_repeat_what_was_there(gateway: Path) -> None:
    proc, out = _follow(gateway, "-n", "1", "-f", "--for", "1")
    assert proc.wait(10) == 0
    assert out.read_text().splitlines() == [
        "session: event=session_end entries_dropped=2 requests_unrecorded=1"
    ]


# -- correlate ------------------------------------------------------------------------------


def test_correlate_by_request_id_then_by_time(gateway: Path, upstream: Path) -> None:
    out = _ok("correlate", str(gateway), str(upstream), "--within", "500ms")
    assert out[-1] == "3 pairs: 2 by request id, 1 by time"
    assert out[0] == "01:45:02.000000 request_id=r2 (Δ +100.0 ms)"
    assert out[1].startswith("    A requests: method=POST path=/v1/responses status=502")
    assert out[2] == "    B requests: method=POST path=/v1/responses status=502"
    assert "01:45:02.500000 request_id=r2 (Δ -400.0 ms)" in out  # the error of r2 as well
    by_time = out.index("01:45:05.000000 by time (Δ +300.0 ms)")
    assert out[by_time + 1].startswith("    A stress:")
    assert out[by_time + 2] == "    B requests: event=engine_hiccup"
    assert not any("far_away" in line for line in out)
    assert not any("B session" in line for line in out)  # session lines never pair by time


@pytest.mark.parametrize(
    ("within", "by_time"),
    [("1s", 2), ("0.31s", 1), ("250ms", 0), ("0.05", 0), ("2", 3), (" 1S ", 2), ("1500ms", 3)],
)
def test_correlate_within_units(gateway: Path, upstream: Path, within: str, by_time: int) -> None:
    out = _ok("correlate", str(gateway), str(upstream), "--within", within)
    assert out[-1].endswith(f"2 by request id, {by_time} by time")


def test_correlate_with_nothing_in_common(gateway: Path, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    assert _ok("correlate", str(gateway), str(empty)) == ["0 pairs: 0 by request id, 0 by time"]


# -- errors ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["summary", "{tmp}/missing"], "{tmp}/missing: not a directory of debug logs"),
        (["tail", "{tmp}/missing"], "{tmp}/missing: not a directory of debug logs"),
        (["summary", "{tmp}/file.jsonl"], "{tmp}/file.jsonl: not a directory of debug logs"),
        (["correlate", "{tmp}", "{tmp}/missing"], "{tmp}/missing: not a directory of debug logs"),
        (
            ["correlate", "{tmp}", "{tmp}", "--within", "soon"],
            "flag --within: soon: a duration such as 1s or 250ms",
        ),
        (
            ["correlate", "{tmp}", "{tmp}", "--within", "ms"],
            "flag --within: ms: a duration such as 1s or 250ms",
        ),
    ],
)
def test_errors_exit_2_with_a_message(tmp_path: Path, args: list[str], needle: str) -> None:
    (tmp_path / "file.jsonl").write_text("")
    result = run_cli("debug", *(a.replace("{tmp}", str(tmp_path)) for a in args))
    assert result.returncode == 2, result.stdout
    assert result.stderr.strip() == "proxyfleet: config error: " + needle.replace(
        "{tmp}", str(tmp_path)
    )
    assert result.stdout == ""


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        ([], "the following arguments are required: ACTION"),
        (["digest"], "invalid choice: 'digest'"),
        (["summary"], "the following arguments are required: dir"),
        (["correlate", "."], "the following arguments are required: dir_b"),
        (["tail", ".", "-n", "many"], "argument -n/--lines: invalid int value: 'many'"),
        (["summary", ".", "--slowest", "x"], "argument --slowest: invalid int value: 'x'"),
    ],
)
def test_bad_arguments_exit_2_with_usage(args: list[str], needle: str) -> None:
    result = run_cli("debug", *args)
    assert result.returncode == 2
    assert result.stderr.startswith("usage: proxyfleet debug")
    assert needle in result.stderr
