"""The benchmark's one command runs end to end and prints every figure it promises.

It needs nginx, wrk and valgrind. Without them the test is skipped on a developer machine with
the reason, but under CI (``CI=true``, where .ci/run installs them) a missing tool is a failure.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench" / "run.py"
_PATH = os.environ.get("PATH", "") + ":/usr/sbin:/sbin"
MISSING = [
    t
    for t in ("nginx", "wrk", "taskset", "valgrind", "redis-server")
    if shutil.which(t, path=_PATH) is None
]


def test_bench_prints_ratios_latency_and_memory() -> None:
    if MISSING:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI must provide {', '.join(MISSING)} (see .ci/run)")
        pytest.skip(f"needs {', '.join(MISSING)}: apt-get install nginx-light wrk valgrind")
    result = subprocess.run(
        [
            sys.executable,
            str(BENCH),
            "--duration",
            "1",
            "--rounds",
            "1",
            "--hold",
            "100",
            "--debug-pairs",
            "1",
            "--backends",
            "8",
            "--mcp-sessions",
            "2",
            "--mcp-calls",
            "10",
            "--valgrind-requests",
            "20,60",
            "--store-tasks",
            "4",
            "--scale",
            "200",
            "--scale-chunks",
            "2",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    for mode in ("non-streaming", "streaming"):
        for target in ("direct", "nginx", "proxyfleet"):
            row = re.search(rf"^{mode}\s+{target}\s+(\d+)\s+[\d.]+\s+[\d.]+\s+(\d+)$", out, re.M)
            assert row is not None, out
            assert int(row.group(1)) > 0
            assert int(row.group(2)) == 0, f"{mode} {target} had errors:\n{out}"
        assert re.search(rf"^ratio proxyfleet/nginx, {mode}: \d\.\d{{3}}  \(rounds", out, re.M), out
    assert "p50 added latency at 1 connection" in out
    for what in (
        r"default settings \(ordinary requests sampled above [\d.]+/s\)",
        r"every request recorded \(sample_above: 0\)",
    ):
        assert re.search(
            rf"^debug mode overhead at 64 connections, {what}: [-+]\d+\.\d\d% throughput lost "
            r"\(requests per CPU-second of the gateway, median of 1 off/on pairs .*; pairs: "
            r"[-+][\d.]+%; req/s off/on: \d+/\d+\); encoder [\d.]+ us per request on core 1$",
            out,
            re.M,
        ), out
    assert re.search(
        r"^debug mode instructions per request, every request recorded \(valgrind, .*\): "
        r"[\d,]+ off, [\d,]+ on: [-+][\d,]+ \([-+][\d.]+%\)$",
        out,
        re.M,
    ), out
    held = re.search(r"nginx [\d.-]+ KB \((\d+) open\), proxyfleet [\d.-]+ KB \((\d+) open\)", out)
    assert held is not None, out
    assert held.groups() == ("100", "100")
    assert re.search(
        r"^mcp session start \(connect \+ initialize, median/p99 of 2\): "
        r"cold child [\d.]+/[\d.]+ ms, prestarted [\d.]+/[\d.]+ ms$",
        out,
        re.M,
    ), out
    assert re.search(
        r"^mcp tool call round trip .* stdio server direct [\d.]+/[\d.]+ ms, "
        r"via proxyfleet [\d.]+/[\d.]+ ms; HTTP server direct",
        out,
        re.M,
    ), out
    leases = re.search(r"leases served min (\d+) max (\d+), failures (\d+)", out)
    assert leases is not None
    assert int(leases.group(3)) == 0
    for proxy in ("proxyfleet", "nginx"):
        assert re.search(
            rf"^{proxy}: 200/200 streams completed, 0 failed \(none\); peak held 200 at the "
            r"client, 200 upstream; [\d.]+ s \(all open after [\d.]+ s\); "
            r"memory per held stream [\d.-]+ KB; "
            r"CPU per stream-second \d+ us$",
            out,
            re.M,
        ), out
    assert re.search(
        r"^proxyfleet/nginx at 200 held streams: memory per stream [\d.-]+x, "
        r"CPU per stream-second [\d.]+x$",
        out,
        re.M,
    ), out
    assert re.search(
        r"^store: lease\+release per second from one process \(4 concurrent loops, 64 "
        r"backends\): redis [\d,]+/s, memory [\d,]+/s$",
        out,
        re.M,
    ), out
    for target in ("memory", "redis", "redis, 2 workers"):
        assert re.search(
            rf"^store: gateway {target}: [\d,]+ req/s, p50 [\d.]+ ms, errors 0$", out, re.M
        ), out
    assert re.search(
        r"^store: CPU per request \(median of rounds\): memory \d+ us; redis \d+ us \+ "
        r"redis-server \d+ us; redis, 2 workers \d+ us \+ redis-server \d+ us$",
        out,
        re.M,
    ), out
    assert re.search(r"^store: ratio redis/memory: \d\.\d{3} ", out, re.M), out
    assert re.search(r"^store: ratio 2 workers/1 \(redis\): \d\.\d{3} ", out, re.M), out
