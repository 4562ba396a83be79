"""Reading debug logs written in tmp_path: load (sessions, categories, torn lines, a file
given by name, another system's file names and RFC 3339 forms, what is skipped and why),
summary, correlate (by request id, then by time, one to one, nearest first), follow, and the
``proxyfleet debug`` CLI over them."""

from __future__ import annotations

import datetime
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from proxyfleet.debuglog import reader
from proxyfleet.debuglog.reader import Entry, correlate, follow, load, summary
from proxyfleet.errors import ConfigError
from tests.conftest import cli_env, run_cli

T0 = 1_700_000_000  # 2023-11-14T22:13:20Z
SESSION = "20231114_221320"
TAIL = (sys.executable, "-m", "proxyfleet", "debug", "tail")


def stamp(offset: float) -> str:
    """The timestamp of a line ``offset`` seconds after T0, as the encoder writes it."""
    ns = T0 * 1_000_000_000 + round(offset * 1e9)
    seconds, rest = divmod(ns, 1_000_000_000)
    day = datetime.datetime.fromtimestamp(seconds, datetime.UTC)
    return f"{day:%Y-%m-%dT%H:%M:%S}.{rest:09d}Z"


def line(offset: float, rid: str | None = None, session: str = SESSION, **fields: Any) -> str:
    data: dict[str, Any] = {"session_id": session, "timestamp": stamp(offset)}
    data["elapsed_seconds"] = offset
    if rid is not None:
        data["request_id"] = rid
    return json.dumps({**data, **fields})


def write(directory: Path, category: str, *lines: str, session: str = SESSION) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{session}_{category}.jsonl"
    with path.open("a") as handle:
        handle.writelines(text + "\n" for text in lines)
    return path


def request(offset: float, rid: str, ms: float, **fields: Any) -> str:
    values = {"method": "POST", "path": "/v1/responses", "status": 200, "backend": "b1"}
    return line(offset, rid, **{**values, "duration_ms": ms, **fields})


@pytest.fixture
def gateway_logs(tmp_path: Path) -> Path:
    logs = tmp_path / "gw"
    write(
        logs,
        "session",
        line(0.0, event="session_start", backends=2),
        line(9.0, event="session_end", entries_written=9, entries_dropped=3),
    )
    write(
        logs,
        "requests",
        request(1.0, "r-1", 12.5),
        request(2.0, "r-2", 5200.0, status=502, backend="b2"),
        request(3.0, "r-3", 40.0, sample_weight=1),
    )
    write(logs, "engine_selection", line(0.9, "r-1", backend="b1", wait_ms=0.0))
    write(
        logs,
        "stress",
        line(
            2.5,
            "r-2",
            event_type="slow_request",
            severity="warning",
            description="request took 5.20s (threshold 5s)",
        ),
    )
    write(
        logs,
        "errors",
        line(2.0, "r-2", error_type="UpstreamError"),
        line(4.0, "r-4", error_type="UpstreamError"),
        line(4.5, "r-5", error_type="Timeout"),
    )
    return logs


def test_load_reads_every_category_oldest_first(gateway_logs: Path) -> None:
    entries = load(gateway_logs)
    assert len(entries) == 10
    assert [e.at for e in entries] == sorted(e.at for e in entries)
    assert entries[0].category == "session"
    assert entries[1].category == "engine_selection"  # its own file, parsed as one category
    assert entries[1].at == pytest.approx(T0 + 0.9)
    assert entries[-1].data["event"] == "session_end"
    assert {e.category for e in entries} == {
        "session",
        "requests",
        "engine_selection",
        "stress",
        "errors",
    }


def test_load_only_the_categories_asked_for(gateway_logs: Path) -> None:
    entries = load(gateway_logs, ["errors", "stress"])
    assert [(e.category, e.request_id) for e in entries] == [
        ("errors", "r-2"),
        ("stress", "r-2"),
        ("errors", "r-4"),
        ("errors", "r-5"),
    ]


def test_load_merges_sessions_and_skips_what_is_not_a_line(tmp_path: Path) -> None:
    later = "20231114_221400"
    write(tmp_path, "errors", line(5.0, "late", session=later), session=later)
    path = write(tmp_path, "errors", line(1.0, "early"), '{"no": "timestamp"}', "not json")
    with path.open("a") as handle:
        handle.write('{"session_id": "x", "timesta')  # a torn last line of a live file
    (tmp_path / "notes.txt").write_text("not a log\n")
    entries = load(tmp_path)
    assert [e.request_id for e in entries] == ["early", "late"]
    assert {e.data["session_id"] for e in entries} == {SESSION, later}


def test_the_fraction_of_a_timestamp_counts(tmp_path: Path) -> None:
    write(tmp_path, "errors", line(2.0, "c"), line(0.123456789, "a"), line(1.5, "b"))
    entries = load(tmp_path)
    assert [e.request_id for e in entries] == ["a", "b", "c"]
    assert entries[0].at - T0 == pytest.approx(0.123456789, abs=1e-6)
    assert entries[1].at - T0 == 1.5


def test_request_id_is_text_or_none() -> None:
    assert Entry("x", 0.0, {}).request_id is None
    assert Entry("x", 0.0, {"request_id": 17}).request_id == "17"


def test_load_of_what_is_not_there(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file or directory"):
        load(tmp_path / "missing")


def test_a_file_is_read_when_named_and_any_jsonl_name_in_a_directory(tmp_path: Path) -> None:
    other = tmp_path / "other"
    other.mkdir()
    (other / "orchestrator.jsonl").write_text(line(1.0, "r-1") + "\n")  # no session, no '_'
    (other / "prov_a_b.jsonl").write_text(line(2.0, "r-2") + "\n")
    (other / "notes.txt").write_text(line(3.0, "r-3") + "\n")  # JSON lines, not .jsonl
    entries = load(other)
    assert [(e.category, e.request_id) for e in entries] == [
        ("orchestrator", "r-1"),
        ("prov_a_b", "r-2"),
    ]
    named = load(other / "notes.txt")  # given by name: read, whatever it is called
    assert [(e.category, e.request_id) for e in named] == [("notes", "r-3")]
    session = write(tmp_path / "gw", "engine_selection", line(4.0, "r-4"))
    assert [e.category for e in load(session)] == ["engine_selection"]


@pytest.mark.parametrize(
    ("stamp", "expected"),
    [
        ("2023-11-14T22:13:20Z", 0.0),
        ("2023-11-14T22:13:20z", 0.0),
        ("2023-11-14T22:13:20+00:00", 0.0),  # Python's isoformat()
        ("2023-11-14T22:13:20.5+00:00", 0.5),
        ("2023-11-14T22:13:20.123456+00:00", 0.123456),
        ("2023-11-14T22:13:20.123456789Z", 0.123456789),  # nanoseconds, as we write them
        ("2023-11-14T23:13:20.25+01:00", 0.25),
        ("2023-11-14T17:43:20-04:30", 0.0),
        ("2023-11-14 22:13:20Z", 0.0),  # RFC 3339 allows a space
        ("2023-11-14t22:13:20Z", 0.0),
        ("2023-11-14T22:13:60Z", 40.0),  # a leap second: the next one
    ],
)
def test_every_rfc3339_form_is_read(tmp_path: Path, stamp: str, expected: float) -> None:
    write(tmp_path, "errors", json.dumps({"timestamp": stamp, "request_id": "r"}))
    (entry,) = load(tmp_path)
    assert entry.at - T0 == pytest.approx(expected, abs=1e-6)


def test_what_is_skipped_is_said_with_why(tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    good = write(logs, "errors", line(1.0, "ok"))
    with good.open("a") as handle:
        handle.write("not json\n")
        handle.write("[1, 2]\n")
        handle.write(json.dumps({"request_id": "no-time"}) + "\n")
        handle.write(json.dumps({"timestamp": "2023/11/14 22:13"}) + "\n")
        handle.write(json.dumps({"timestamp": "2023-11-14T22:13:20"}) + "\n")  # no offset
        handle.write(json.dumps({"timestamp": 1700000000}) + "\n")
        handle.write('{"session_id": "x", "timesta')  # a torn last line: still being written
    (logs / "notes.txt").write_text("not a log\n")
    (logs / "older").mkdir()
    (logs / ".hidden").write_text("")
    loaded = reader.read(logs)
    assert [e.request_id for e in loaded.entries] == ["ok"]
    name = good.name
    assert loaded.skipped == [
        f"{logs / 'notes.txt'}: not a .jsonl file (give its path to read it anyway)",
        f"{logs / 'older'}: a directory (not read: give its path)",
        f"{logs / name}: 1 line that is not JSON (line 2)",
        f"{logs / name}: 1 line that is not a JSON object (line 3)",
        f"{logs / name}: 1 line without a timestamp (line 4)",
        f"{logs / name}: 3 lines whose timestamp is not RFC 3339, e.g. '2023/11/14 22:13' "
        "(lines 5, 6, 7)",
    ]


def test_describe_leaves_out_the_common_fields() -> None:
    data = json.loads(line(1.0, "r", phase="waiting", elapsed_ms=12.5))
    assert Entry("disconnects", T0 + 1.0, data).describe() == (
        "disconnects: phase=waiting elapsed_ms=12.5"
    )


def test_summary(gateway_logs: Path) -> None:
    text = summary(load(gateway_logs))
    assert text.startswith(f"sessions: {SESSION}\nfrom 2023-11-14 22:13:20 to 22:13:29 UTC (9.0s)")
    counts = text.split("entries:\n", 1)[1].split("\n\n", 1)[0].splitlines()
    assert [c.split() for c in counts] == [
        ["engine_selection", "1"],
        ["errors", "3"],
        ["requests", "3"],
        ["session", "2"],
        ["stress", "1"],
        ["(dropped)", "3"],
    ]
    assert "(sampled)" not in text  # every request line stands for itself
    slowest = text.split("slowest requests (of 3):\n", 1)[1].split("\n\n", 1)[0].splitlines()
    assert [s.split()[0] for s in slowest] == ["5200.0", "40.0", "12.5"]
    assert "502  POST /v1/responses  backend=b2  request_id=r-2" in slowest[0]
    assert (
        "stress timeline:\n  22:13:22.500000  warning  slow_request: "
        "request took 5.20s (threshold 5s)"
    ) in text
    assert text.endswith("errors: UpstreamError × 2, Timeout × 1")


def test_summary_limits_the_slowest(gateway_logs: Path) -> None:
    text = summary(load(gateway_logs), slowest=1)
    listed = text.split("slowest requests (of 3):\n", 1)[1].split("\n\n", 1)[0]
    assert len(listed.splitlines()) == 1


def test_summary_counts_sampled_requests_by_their_weights(tmp_path: Path) -> None:
    write(
        tmp_path,
        "requests",
        request(1.0, "a", 1.0, sample_weight=40),
        request(2.0, "b", 1.0, sample_weight=40),
        request(3.0, "c", 900.0, status=500),  # no weight: stands for itself
    )
    write(tmp_path, "session", line(4.0, event="session_end", requests_unrecorded=7))
    text = summary(load(tmp_path))
    assert "3 request lines stand for 88 requests" in text
    assert "stress timeline: none" in text
    assert "errors:" not in text


def test_summary_of_nothing() -> None:
    assert summary([]) == "no entries"


def entries_of(category: str, *lines: str) -> list[Entry]:
    return [Entry(category, T0 + json.loads(t)["elapsed_seconds"], json.loads(t)) for t in lines]


def test_correlate_by_request_id_first() -> None:
    a = entries_of("requests", line(1.0, "r-1"), line(2.0, "r-2"))
    b = entries_of(
        "provisioning",
        line(5.0, "r-1", operation="begin"),
        line(5.5, "r-1", operation="end"),
        line(2.01, "other"),
    )
    pairs = correlate(a, b, within=1.0)
    assert [(p.a.request_id, p.b.data.get("operation"), p.by) for p in pairs] == [
        ("r-1", "begin", "request_id"),  # far apart in time: the id decides; one to one
        ("r-2", None, "time"),  # no shared id: the nearest in time
    ]
    assert pairs[1].b.request_id == "other"


def test_entries_sharing_a_request_id_pair_one_to_one_nearest_first() -> None:
    # three provisioning attempts on one side, their three answers and a stream on the other
    a = entries_of(
        "provisioning",
        line(1.0, "r", operation="attempt_1"),
        line(2.0, "r", operation="attempt_2"),
        line(3.0, "r", operation="success"),
        line(3.5, "r", operation="reported_started"),
    )
    b = entries_of(
        "provisioning",
        line(1.1, "r", operation="failed_1"),
        line(2.05, "r", operation="failed_2"),
        line(2.95, "r", operation="started"),
    )
    b += entries_of("streams", line(3.52, "r", operation="stream_started"))
    pairs = correlate(a, b, within=0.0)
    assert [(p.a.data["operation"], p.b.data["operation"]) for p in pairs] == [
        ("attempt_1", "failed_1"),
        ("attempt_2", "failed_2"),
        ("success", "started"),
        ("reported_started", "stream_started"),
    ]
    # more on one side: the nearest get partners, the rest none (and no time pair either)
    lone = correlate(a[:1], b, within=10.0)
    assert [(p.a.data["operation"], p.b.data["operation"], p.by) for p in lone] == [
        ("attempt_1", "failed_1", "request_id")
    ]


def test_correlate_by_time_takes_the_nearest_within_the_window() -> None:
    a = entries_of("requests", line(1.0, "x"), line(3.0, "y"), line(10.0, "z"))
    b = entries_of("streams", line(0.7, "p"), line(1.1, "q"), line(3.5, "s"))
    pairs = correlate(a, b, within=0.25)
    assert [(p.a.request_id, p.b.request_id) for p in pairs] == [("x", "q")]  # 3.5 is 0.5 off
    wide = correlate(a, b, within=1.0)
    assert [(p.a.request_id, p.b.request_id) for p in wide] == [("x", "q"), ("y", "s")]
    # one to one: an entry that is the nearest of two pairs with the nearer of them only
    crowd = entries_of("requests", line(1.0, "m"), line(1.3, "n"), line(1.45, "o"))
    (one, two) = correlate(crowd, entries_of("streams", line(1.4, "p"), line(0.5, "q")), 1.0)
    assert [(one.a.request_id, one.b.request_id), (two.a.request_id, two.b.request_id)] == [
        ("m", "q"),  # 0.5 off, as p went to o (0.05 off)
        ("o", "p"),
    ]


def test_correlate_leaves_out_sessions_and_what_was_paired_by_id() -> None:
    a = entries_of("requests", line(1.0, "r-1"), line(1.05, "r-9"))
    a += entries_of("session", line(1.0, event="session_start"))
    b = entries_of("streams", line(1.0, "r-1"))
    b += entries_of("session", line(1.05, event="session_start"))
    pairs = correlate(a, b, within=1.0)
    assert [(p.a.request_id, p.by) for p in pairs] == [("r-1", "request_id")]


def test_a_pair_describes_both_sides_and_the_delta() -> None:
    a = entries_of("requests", line(1.0, "r-1", status=200))
    b = entries_of("streams", line(1.0125, "r-1", event="started"))
    (pair,) = correlate(a, b, within=1.0)
    assert pair.describe() == (
        "22:13:21.000000 request_id=r-1 (Δ +12.5 ms)\n"
        "    A requests: status=200\n"
        "    B streams: event=started"
    )


def append(path: Path, text: str) -> None:
    with path.open("a") as handle:
        handle.write(text)


def test_follow_prints_lines_as_they_are_completed(tmp_path: Path) -> None:
    errors = tmp_path / f"{SESSION}_errors.jsonl"
    steps = [
        lambda: None,  # nothing there yet
        lambda: write(tmp_path, "errors", line(1.0, "e-1", error_type="X")),
        lambda: append(errors, ""),  # nothing new
        lambda: write(tmp_path, "streams", line(2.0, "s-1", event="started")),
        lambda: append(errors, line(3.0, "e-2") + "\n" + '{"torn": '),
        lambda: append(errors, '"now whole"}\n'),
    ]
    printed: list[list[str]] = []

    def stop() -> bool:
        if len(printed) == len(steps):
            return True
        steps[len(printed)]()
        printed.append([])
        return False

    follow(tmp_path, ["errors"], lambda text: printed[-1].append(text), stop, interval=0.0)
    assert printed == [
        [],
        ["errors: error_type=X"],
        [],
        [],  # streams: not a category asked for
        ["errors: "],  # e-2 has no fields of its own; the torn line waits for its end
        ["errors: torn=now whole"],
    ]


def test_cli_summary(gateway_logs: Path) -> None:
    result = run_cli("debug", "summary", str(gateway_logs), "--slowest", "1")
    assert result.returncode == 0, result.stderr
    assert result.stdout == summary(load(gateway_logs), slowest=1) + "\n"


def test_cli_tail_the_last_lines_of_some_categories(gateway_logs: Path) -> None:
    result = run_cli("debug", "tail", str(gateway_logs), "-n", "2", "--category", "errors")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "errors: error_type=UpstreamError",
        "errors: error_type=Timeout",
    ]
    everything = run_cli("debug", "tail", str(gateway_logs), "-n", "0")
    assert (everything.returncode, everything.stdout) == (0, "")


def test_cli_tail_follow_prints_what_is_written_meanwhile(tmp_path: Path) -> None:
    logs = tmp_path / "live"
    logs.mkdir()
    tail = subprocess.Popen(
        [*TAIL, str(logs), "-n", "0", "-f", "--for", "1.0", "--category", "errors"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=cli_env(),
    )
    written = []
    try:
        while tail.poll() is None:  # new lines, until it has followed for its second
            written.append(f"errors: n={len(written)}")
            write(logs, "errors", line(1.0, "e", n=len(written) - 1))
            write(logs, "streams", line(1.0, "s", n=len(written) - 1))
            time.sleep(0.05)
        out, err = tail.communicate(timeout=10)
    finally:
        if tail.poll() is None:
            tail.kill()
            tail.communicate()
    assert tail.returncode == 0, err
    printed = out.splitlines()
    assert printed, "nothing was followed"
    first = written.index(printed[0])
    assert printed == written[first : first + len(printed)]  # in order, each once


def test_cli_tail_follow_does_not_print_old_entries_again(gateway_logs: Path) -> None:
    result = run_cli("debug", "tail", str(gateway_logs), "-n", "1", "-f", "--for", "0.3")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "session: event=session_end entries_written=9 entries_dropped=3"
    ]


def test_cli_correlate(tmp_path: Path) -> None:
    write(tmp_path / "a", "requests", request(1.0, "r-1", 5.0), request(2.0, "r-2", 5.0))
    write(
        tmp_path / "b",
        "provisioning",
        line(1.5, "r-1", operation="start"),
        line(2.2, "other", operation="x"),
    )
    result = run_cli(
        "debug", "correlate", str(tmp_path / "a"), str(tmp_path / "b"), "--within", "250ms"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0].endswith("request_id=r-1 (Δ +500.0 ms)")
    assert result.stdout.splitlines()[-1] == "2 pairs: 1 by request id, 1 by time"
    narrow = run_cli(
        "debug", "correlate", str(tmp_path / "a"), str(tmp_path / "b"), "--within", "0.1s"
    )
    assert narrow.stdout.splitlines()[-1] == "1 pairs: 1 by request id, 0 by time"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["summary", "{missing}"], "no such file or directory"),
        (["correlate", "{tmp}", "{tmp}", "--within", "soon"], "a duration such as 1s or 250ms"),
    ],
)
def test_cli_errors_exit_2(tmp_path: Path, args: list[str], message: str) -> None:
    filled = [a.format(missing=tmp_path / "missing", tmp=tmp_path) for a in args]
    result = run_cli("debug", *filled)
    assert result.returncode == 2
    assert "proxyfleet: config error:" in result.stderr
    assert message in result.stderr
