"""Debug mode end to end: every category, the common fields, one windowed stress event, no
secret, and the debug CLI reading and correlating the gateway's and the upstream's logs."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import stat
import time
from pathlib import Path

import aiohttp

from tests.conftest import Proc, Processes, run_cli, write_keys

STAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z$")
SECRET = "sk-debug-secret-ZZZZ9999"


async def test_debug_mode_end_to_end(procs: Processes, tmp_path: Path) -> None:
    gw_dir, mock_dir = tmp_path / "gw", tmp_path / "upstream"
    mock = procs.mock("--latency", "0.15", "--chunks", "3", "--debug-dir", str(mock_dir))
    dead = procs.mock("--name", "dead")
    creds = write_keys(tmp_path / "accounts", {"a": SECRET})
    gateway = procs.gateway(
        "--credentials-dir",
        str(creds),
        "--upstream",
        mock.url,
        "--debug",
        "--debug-dir",
        str(gw_dir),
        env={
            "PROXYFLEET_DEBUG__SLOW_REQUEST": "0.1",
            "PROXYFLEET_DEBUG__SLOW_REQUESTS_PER_WINDOW": "3",
        },
    )
    other = procs.gateway(
        "--upstream",
        dead.url,
        "--debug",
        "--debug-dir",
        str(tmp_path / "x"),
        env={"PROXYFLEET_POOL__UNHEALTHY_AFTER": "1"},
    )
    dead.popen.kill()
    dead.popen.wait(5)
    url = gateway.url + "/chat/completions"
    async with aiohttp.ClientSession() as session:
        for n in range(6):  # slow requests: one slow_request event, one rate event
            body = {"model": "m", "stream": n % 2 == 0, "messages": []}
            async with session.post(url, json=body, headers={"X-Request-ID": f"dbg-{n}"}) as r:
                assert r.status == 200
                await r.read()

        async def leave() -> None:
            async with session.post(
                url, json={"model": "m", "stream": True}, headers={"X-Request-ID": "dbg-gone"}
            ) as r:
                await r.content.readany()
                await asyncio.Event().wait()

        task = asyncio.ensure_future(leave())
        await asyncio.sleep(0.3)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        for _ in range(2):  # an upstream error, then no healthy backend
            async with session.post(other.url + "/chat/completions", json={}) as r:
                assert r.status in (502, 503)
    await asyncio.sleep(0.3)
    gateway.stop()
    other.stop()
    mock.stop()

    files = {
        p.name.split("_", 2)[2].removesuffix(".jsonl"): p
        for d in (gw_dir, tmp_path / "x")
        for p in d.glob("*.jsonl")
    }
    assert {
        "session",
        "requests",
        "engine_selection",
        "streams",
        "stress",
        "errors",
        "disconnects",
    } <= set(files)
    assert stat.S_IMODE(gw_dir.stat().st_mode) == 0o700
    everything = ""
    for category, path in files.items():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        text = path.read_text()
        everything += text
        for line in text.splitlines():
            entry = json.loads(line)
            assert list(entry)[:3] == ["session_id", "timestamp", "elapsed_seconds"]
            assert STAMP.match(entry["timestamp"])
            if category in ("requests", "engine_selection", "disconnects"):
                assert entry["request_id"]
    stress = [
        json.loads(line) for line in (next(gw_dir.glob("*_stress.jsonl")).read_text().splitlines())
    ]
    assert sorted(e["event_type"] for e in stress) == ["high_slow_request_rate", "slow_request"]
    assert all(e["severity"] in ("warning", "critical") for e in stress)
    other_stress = next((tmp_path / "x").glob("*_stress.jsonl")).read_text()
    assert "all_backends_unhealthy" in other_stress
    streams = [
        json.loads(line) for line in next(gw_dir.glob("*_streams.jsonl")).read_text().splitlines()
    ]
    ended = {e["request_id"]: e["reason"] for e in streams if e["event"] == "ended"}
    assert ended["dbg-0"] == "completed"
    assert ended["dbg-gone"] == "client_disconnected"
    disconnects = next(gw_dir.glob("*_disconnects.jsonl")).read_text()
    assert '"request_id":"dbg-gone"' in disconnects
    assert SECRET not in everything + "".join(p.read_text() for p in mock_dir.glob("*"))

    summary = run_cli("debug", "summary", str(gw_dir))
    assert summary.returncode == 0
    assert "slowest requests (of 7)" in summary.stdout
    assert "high_slow_request_rate" in summary.stdout
    correlated = run_cli("debug", "correlate", str(gw_dir), str(mock_dir), "--within", "1s")
    assert correlated.returncode == 0
    assert "request_id=dbg-3" in correlated.stdout
    by_id = int(re.search(r"(\d+) by request id", correlated.stdout).group(1))  # type: ignore[union-attr]
    assert by_id == 7  # one pair per request: the gateway's entry with the mock's, one to one
    tail = run_cli("debug", "tail", str(gw_dir), "--category", "stress", "-n", "5")
    assert tail.stdout.count("stress: ") == 2
    follow = run_cli("debug", "tail", str(gw_dir), "-f", "--for", "0.5", "-n", "0")
    assert follow.returncode == 0


async def test_a_killed_gateway_loses_nothing_it_sent_and_leaves_no_encoder(
    procs: Processes, tmp_path: Path
) -> None:
    mock = procs.mock()
    gateway = procs.gateway("--upstream", mock.url, "--debug", "--debug-dir", str(tmp_path / "d"))
    async with aiohttp.ClientSession() as session:
        for n in range(20):
            async with session.post(
                gateway.url + "/chat/completions",
                json={"model": "m", "messages": []},
                headers={"X-Request-ID": f"k-{n}"},
            ) as r:
                assert r.status == 200
    (encoder,) = _children(gateway.popen.pid)
    await asyncio.sleep(0.6)  # past a flush interval: the rows are with the encoder
    gateway.stop(signal.SIGKILL)
    deadline = time.monotonic() + 10
    while _alive(encoder):  # it finishes on its own, then exits
        assert time.monotonic() < deadline, "the encoder outlived its gateway"
        await asyncio.sleep(0.05)
    lines = next((tmp_path / "d").glob("*_requests.jsonl")).read_text().splitlines()
    assert [json.loads(line)["request_id"] for line in lines] == [f"k-{n}" for n in range(20)]


def _children(pid: int) -> list[int]:
    return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def _alive(pid: int) -> bool:
    """Running (an exited process its new parent has not reaped yet is not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def _sampling_gateway(procs: Processes, directory: Path, env: dict[str, str] | None = None) -> Proc:
    """A gateway in debug mode, writing to ``directory``, that samples above 20 requests a
    second (a rate a test reaches easily)."""
    mock = procs.mock()
    return procs.gateway(
        "--upstream",
        mock.url,
        "--debug",
        "--debug-dir",
        str(directory),
        env={
            "PROXYFLEET_DEBUG__SAMPLE_ABOVE": "20",
            "PROXYFLEET_POOL__MAX_CONCURRENCY": "64",
            **(env or {}),
        },
    )


async def test_under_load_ordinary_requests_are_sampled_and_the_rest_all_kept(
    procs: Processes, tmp_path: Path
) -> None:
    gateway = _sampling_gateway(procs, tmp_path / "d", {"PROXYFLEET_DEBUG__FLUSH_INTERVAL": "0.05"})
    url = gateway.url + "/chat/completions"
    ordinary, bad = 1500, 50
    async with aiohttp.ClientSession() as session:
        todo = iter(range(ordinary + bad))

        async def worker() -> None:
            for n in todo:
                if n % 31 == 30:  # not ordinary: a 400 from the gateway, always recorded
                    data: bytes = b"{not json"
                    rid = f"bad-{n}"
                else:
                    data, rid = b'{"model": "m", "messages": []}', f"ok-{n}"
                headers = {"X-Request-ID": rid, "Content-Type": "application/json"}
                async with session.post(url, data=data, headers=headers) as r:
                    assert r.status == (400 if rid.startswith("bad") else 200)
                    await r.read()

        await asyncio.gather(*(worker() for _ in range(16)))
        await asyncio.sleep(1.5)  # quiet: the rate falls below 20/s, sampling stops
        async with session.post(url, json={"model": "m"}, headers={"X-Request-ID": "after"}) as r:
            assert r.status == 200
    await asyncio.sleep(0.3)
    gateway.stop()
    (requests_file,) = (tmp_path / "d").glob("*_requests.jsonl")
    lines = [json.loads(line) for line in requests_file.read_text().splitlines()]
    kept = [line for line in lines if str(line["request_id"]).startswith("ok-")]
    errors = [line for line in lines if str(line["request_id"]).startswith("bad-")]
    sent_ok = ordinary + bad - len(range(30, ordinary + bad, 31))
    assert len(errors) == len(range(30, ordinary + bad, 31))  # every one of them
    assert {line["sample_weight"] for line in errors} == {1}
    assert len(kept) < sent_ok / 2  # sampled
    represented = sum(int(line["sample_weight"]) for line in kept)
    (after,) = [line for line in lines if line["request_id"] == "after"]  # recorded again
    # The weights stand for the rest exactly: the last few of the burst ride on "after".
    assert represented + int(after["sample_weight"]) - 1 == sent_ok
    (session_file,) = (tmp_path / "d").glob("*_session.jsonl")
    events = [json.loads(line)["event"] for line in session_file.read_text().splitlines()]
    assert "sampling" in events
    assert events.index("sampling_stopped") > events.index("sampling")
    summary = run_cli("debug", "summary", str(tmp_path / "d"))
    total = represented + len(errors) + int(after["sample_weight"])
    assert f"stand for {total} requests" in summary.stdout


async def test_a_burst_after_a_quiet_spell_is_sampled_from_its_first_rows(
    procs: Processes, tmp_path: Path
) -> None:
    """Quiet, the flush timer backs off to a second; a burst must not wait for it to start
    sampling (its rows make the gateway resample at once)."""
    gateway = _sampling_gateway(procs, tmp_path / "d")
    url = gateway.url + "/chat/completions"
    await asyncio.sleep(2.5)  # quiet: the timer is at a second between flushes by now
    burst = 600
    async with aiohttp.ClientSession() as session:
        todo = iter(range(burst))

        async def worker() -> None:
            for _ in todo:
                async with session.post(url, json={"model": "m", "messages": []}) as r:
                    assert r.status == 200
                    await r.read()

        began = time.monotonic()
        await asyncio.gather(*(worker() for _ in range(16)))
        took = time.monotonic() - began
    await asyncio.sleep(0.3)
    gateway.stop()
    (requests_file,) = (tmp_path / "d").glob("*_requests.jsonl")
    lines = [json.loads(line) for line in requests_file.read_text().splitlines()]
    (session_file,) = (tmp_path / "d").glob("*_session.jsonl")
    (end,) = [
        entry
        for entry in map(json.loads, session_file.read_text().splitlines())
        if entry["event"] == "session_end"
    ]
    unrecorded = int(end["requests_unrecorded"])  # the last few: no row came after them
    assert sum(int(line["sample_weight"]) for line in lines) + unrecorded == burst
    # Without the burst check every request until the next flush (up to a second) keeps a row.
    # At 20/s the burst itself keeps about 20 * took of them, plus the first few.
    assert len(lines) < 40 + 20 * took * 2, (len(lines), took)
