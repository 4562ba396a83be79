"""MCP figures for bench/run.py: session start latency (a cold child vs a prestarted one) and
tool-call round trips through the proxy vs direct, stdio and streamable-HTTP upstreams alike.

Everything runs on 127.0.0.1 with the real ``mcp`` SDK client and the test server
(tests/mcpproxy/server_app.py); each loop is bounded by its count.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from mcp import Client, StdioServerParameters

SERVER = str(Path(__file__).resolve().parents[1] / "tests" / "mcpproxy" / "server_app.py")


def _ms(values: list[float]) -> tuple[float, float]:
    ordered = sorted(values)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return statistics.median(ordered) * 1000, p99 * 1000


def _admin(root: str) -> dict[str, Any]:
    with urllib.request.urlopen(root + "/admin/sessions", timeout=5) as response:
        routes: list[dict[str, Any]] = json.load(response)["routes"]
    return {r["path"]: r for r in routes}


async def _session_starts(root: str, path: str, count: int, prestart: int) -> list[float]:
    times = []
    for _ in range(count):
        for _ in range(600 if prestart else 0):  # a prestarted child ready, as in steady state
            if _admin(root)[path]["prestarted"] >= prestart:
                break
            await asyncio.sleep(0.05)
        started = time.perf_counter()
        async with Client(root + path, mode="legacy"):
            times.append(time.perf_counter() - started)
    return times


async def _round_trips(server: Any, calls: int) -> list[float]:
    times = []
    async with Client(server, mode="legacy") as client:
        await client.call_tool("whoami", {})  # warm
        for _ in range(calls):
            started = time.perf_counter()
            await client.call_tool("whoami", {})
            times.append(time.perf_counter() - started)
    return times


def _wait_http(url: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(url, timeout=1).close()
            return
        except OSError as exc:
            if getattr(exc, "code", None):  # any HTTP answer means it is up
                return
            time.sleep(0.1)
    raise SystemExit(f"{url} did not come up")


def mcp_figures(
    work: Path, gateway_port: int, server_port: int, sessions: int, calls: int
) -> list[str]:
    """Start the test server (HTTP) and a gateway with three MCP routes, measure, stop."""
    py = sys.executable
    config = {
        "server": {"port": gateway_port},
        "log": {"level": "warning"},
        "mcp": [
            {"path": "/cold", "upstream": {"command": [py, SERVER]}},
            {"path": "/warm", "upstream": {"command": [py, SERVER]}, "prestart": 2},
            {"path": "/remote", "upstream": {"url": f"http://127.0.0.1:{server_port}/mcp"}},
        ],
    }
    (work / "mcp.yaml").write_text(json.dumps(config))
    root = f"http://127.0.0.1:{gateway_port}"
    with (
        (work / "mcp-server.log").open("wb") as server_log,
        (work / "mcp-gateway.log").open("wb") as gateway_log,
    ):
        server = subprocess.Popen(
            [py, SERVER, "--http", str(server_port)], stdout=server_log, stderr=server_log
        )
        gateway = subprocess.Popen(
            [py, "-m", "proxyfleet", "serve", "-c", str(work / "mcp.yaml")],
            stdout=gateway_log,
            stderr=gateway_log,
        )
        try:
            _wait_http(f"http://127.0.0.1:{server_port}/mcp")
            _wait_http(root + "/live")
            return asyncio.run(_measure(root, server_port, sessions, calls))
        finally:
            for proc in (gateway, server):
                proc.terminate()
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(5)


async def _measure(root: str, server_port: int, sessions: int, calls: int) -> list[str]:
    cold = _ms(await _session_starts(root, "/cold", sessions, 0))
    warm = _ms(await _session_starts(root, "/warm", sessions, 2))
    stdio = StdioServerParameters(command=sys.executable, args=[SERVER])
    direct_stdio = _ms(await _round_trips(stdio, calls))
    proxy_stdio = _ms(await _round_trips(root + "/cold", calls))
    direct_http = _ms(await _round_trips(f"http://127.0.0.1:{server_port}/mcp", calls))
    proxy_http = _ms(await _round_trips(root + "/remote", calls))
    return [
        f"mcp session start (connect + initialize, median/p99 of {sessions}): "
        f"cold child {cold[0]:.1f}/{cold[1]:.1f} ms, prestarted {warm[0]:.1f}/{warm[1]:.1f} ms",
        f"mcp tool call round trip (median/p99 of {calls}, mcp SDK client): "
        f"stdio server direct {direct_stdio[0]:.2f}/{direct_stdio[1]:.2f} ms, "
        f"via proxyfleet {proxy_stdio[0]:.2f}/{proxy_stdio[1]:.2f} ms; "
        f"HTTP server direct {direct_http[0]:.2f}/{direct_http[1]:.2f} ms, "
        f"via proxyfleet {proxy_http[0]:.2f}/{proxy_http[1]:.2f} ms "
        f"(+{proxy_http[0] - direct_http[0]:.2f} ms)",
    ]
