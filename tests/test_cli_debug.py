"""``proxyfleet debug summary|tail|correlate`` through the real CLI, on debug logs written in
tmp_path as debug mode writes them (``<session>_<category>.jsonl``) and as another system may
(any ``.jsonl`` name, ``isoformat()`` timestamps): what each prints, what it says it skipped
and why, exit codes, the errors for a missing path, a bad ``--within`` and bad arguments, and
a reader that goes away (``| head``)."""

from __future__ import annotations

import datetime
import json
import os
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


def _notes(gateway: Path) -> str:
    """What the CLI says it skipped in the gateway fixture: its notes.txt."""
    return (
        f"proxyfleet: skipped {gateway / 'notes.txt'}: not a .jsonl file "
        "(give its path to read it anyway)\n"
    )


def _ok(*args: str, stderr: str = "") -> list[str]:
    result = run_cli("debug", *args)
    assert result.returncode == 0, result.stderr
    assert result.stderr == stderr
    return result.stdout.splitlines()


# -- summary --------------------------------------------------------------------------------


def test_summary_counts_slowest_stress_and_errors(gateway: Path) -> None:
    out = _ok("summary", str(gateway), stderr=_notes(gateway))
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
    out = _ok("summary", str(gateway), "--slowest", "1", stderr=_notes(gateway))
    first = out.index("slowest requests (of 3):")
    assert out[first + 1].split()[0] == "950.0"
    assert out[first + 2] == ""  # only one


def test_summary_of_several_sessions(gateway: Path) -> None:
    _write(gateway, OTHER, "requests", _line(OTHER, 20, "r9", duration_ms=1.0, status=200))
    out = _ok("summary", str(gateway), stderr=_notes(gateway))
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
    assert _ok("tail", str(gateway), "-n", "3", stderr=_notes(gateway)) == [
        "stress: severity=warning event_type=slow_request description=a request took 6s",
        "errors: error_type=UpstreamClosed",
        "session: event=session_end entries_dropped=2 requests_unrecorded=1",
    ]
    everything = _ok("tail", str(gateway), "-n", "100", stderr=_notes(gateway))
    assert len(everything) == 9  # every entry, the torn one aside
    assert everything[0] == "session: event=session_start"


def test_tail_categories(gateway: Path) -> None:
    out = _ok(
        "tail", str(gateway), "--category", "errors", "--category", "stress", stderr=_notes(gateway)
    )
    assert [line.split(":")[0] for line in out] == ["errors", "errors", "stress", "errors"]
    assert _ok("tail", str(gateway), "--category", "nothing-like-it", stderr=_notes(gateway)) == []


def test_tail_zero_lines(gateway: Path) -> None:
    assert _ok("tail", str(gateway), "-n", "0", stderr=_notes(gateway)) == []


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
        _notes(gateway).rstrip("\n"),  # stderr, into the same file here
        "session: event=session_end entries_dropped=2 requests_unrecorded=1",
    ]


# -- correlate ------------------------------------------------------------------------------


def test_correlate_by_request_id_then_by_time(gateway: Path, upstream: Path) -> None:
    out = _ok("correlate", str(gateway), str(upstream), "--within", "500ms", stderr=_notes(gateway))
    assert out[-1] == "2 pairs: 1 by request id, 1 by time"
    assert out[0] == "01:45:02.000000 request_id=r2 (Δ +100.0 ms)"
    assert out[1].startswith("    A requests: method=POST path=/v1/responses status=502")
    assert out[2] == "    B requests: method=POST path=/v1/responses status=502"
    # one to one: r2's error on the gateway side has no second partner for the same id
    assert not any("01:45:02.500000" in line for line in out)
    by_time = out.index("01:45:05.000000 by time (Δ +300.0 ms)")
    assert out[by_time + 1].startswith("    A stress:")
    assert out[by_time + 2] == "    B requests: event=engine_hiccup"
    assert not any("far_away" in line for line in out)
    assert not any("B session" in line for line in out)  # session lines never pair by time


@pytest.mark.parametrize(
    ("within", "by_time"),
    [("1s", 1), ("0.31s", 1), ("250ms", 0), ("0.05", 0), ("2", 1), (" 1S ", 1), ("40s", 2)],
)
def test_correlate_within_units(gateway: Path, upstream: Path, within: str, by_time: int) -> None:
    out = _ok("correlate", str(gateway), str(upstream), "--within", within, stderr=_notes(gateway))
    assert out[-1].endswith(f"1 by request id, {by_time} by time")


def test_correlate_with_nothing_to_read_says_so_and_fails(gateway: Path, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    result = run_cli("debug", "correlate", str(gateway), str(empty))
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr == _notes(gateway) + f"proxyfleet: nothing could be read from {empty}\n"


def _iso(seconds: float, offset_hours: float = 0.0) -> str:
    """What Python's ``datetime.isoformat()`` writes: ``+00:00``, not ``Z``."""
    zone = datetime.timezone(datetime.timedelta(hours=offset_hours))
    start = datetime.datetime(2026, 11, 22, 1, 45, tzinfo=datetime.UTC)
    return (start + datetime.timedelta(seconds=seconds)).astimezone(zone).isoformat()


def test_correlate_reads_another_systems_log_by_file_or_directory(
    gateway: Path, tmp_path: Path
) -> None:
    other = tmp_path / "orchestrator"
    other.mkdir()
    log = other / "orchestrator.jsonl"  # no session, no '_' in its name
    log.write_text(
        json.dumps({"timestamp": _iso(2.05), "request_id": "r2", "event": "start"})
        + "\n"
        + json.dumps({"timestamp": _iso(5.2, 1), "event": "vpn_flap"})  # +01:00
        + "\n"
    )
    for path in (other, log):
        out = _ok("correlate", str(gateway), str(path), "--within", "1s", stderr=_notes(gateway))
        assert out[-1] == "2 pairs: 1 by request id, 1 by time"
        assert "    B orchestrator: event=start" in out
        assert "    B orchestrator: event=vpn_flap" in out


def test_correlate_says_what_it_skipped_and_fails_when_nothing_could_be_read(
    gateway: Path, tmp_path: Path
) -> None:
    log = tmp_path / "other.jsonl"
    log.write_text(
        json.dumps({"time": 17, "request_id": "r2"})  # a number of some kind, not RFC 3339
        + "\n"
        + "plain text\n"
    )
    result = run_cli("debug", "correlate", str(gateway), str(log))
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        _notes(gateway).rstrip("\n"),
        f"proxyfleet: skipped {log}: 1 line whose timestamp is not RFC 3339, e.g. 17 (line 1)",
        f"proxyfleet: skipped {log}: 1 line that is not JSON (line 2)",
        f"proxyfleet: nothing could be read from {log}",
    ]


@pytest.mark.parametrize(
    ("args", "code"),
    [
        (["debug", "summary", "{gateway}"], 141),
        (["debug", "tail", "{gateway}", "-n", "100"], 141),
        (["debug", "correlate", "{gateway}", "{upstream}", "--within", "40s"], 141),
        (["debug", "tail", "{gateway}", "-f", "--for", "30"], 141),  # at once, not in 30 s
        (["config", "--upstream", "http://127.0.0.1:9/v1"], 141),
        (["--help"], 0),  # argparse itself lets a failed write of its help go
    ],
)
def test_a_reader_that_goes_away_ends_every_output_command_quietly(
    gateway: Path, upstream: Path, args: list[str], code: int
) -> None:
    read, write = os.pipe()
    os.close(read)  # `| head` that has read what it wanted and left, before anything came
    try:
        result = subprocess.run(
            [sys.executable, "-m", "proxyfleet"]
            + [a.format(gateway=gateway, upstream=upstream) for a in args],
            stdout=write,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            env=cli_env(),
            timeout=30,
            text=True,
        )
    finally:
        os.close(write)
    assert "Traceback" not in result.stderr
    assert "BrokenPipeError" not in result.stderr
    assert "Exception ignored" not in result.stderr
    assert result.returncode == code  # 128 + SIGPIPE, as a `cat` killed by it would say


# -- errors ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["summary", "{tmp}/missing"], "{tmp}/missing: no such file or directory"),
        (["tail", "{tmp}/missing"], "{tmp}/missing: no such file or directory"),
        (["correlate", "{tmp}", "{tmp}/missing"], "{tmp}/missing: no such file or directory"),
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
