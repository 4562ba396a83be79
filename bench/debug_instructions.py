"""Debug mode's cost in instructions, for bench/run.py: noise-free where wall-clock is not.

The gateway runs under valgrind (cachegrind, no cache simulation), serves N1 and then (in a
fresh process) N2 requests at 64 connections, with debug mode off and on. The instructions per
request are the difference between the two runs' totals divided by N2 - N1, so start-up and
shutdown cancel out. Counted: the gateway process's user-space instructions, all its threads;
not counted: the kernel, and the encoder process (its CPU time is in the bench's other line).

Valgrind slows the gateway about 30-fold, so the debug flush interval is raised by as much:
each batch then holds as many rows as it would at full speed.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import aiohttp

from proxyfleet.config.model import DebugConfig

COUNTS = (500, 3000)  # requests served by the two runs of each mode
SLOWDOWN = 30  # how much slower the gateway runs under valgrind


async def _load(port: int, path: str, body: str, count: int, connections: int) -> int:
    """``count`` POSTs over ``connections`` keep-alive connections; how many got a 200."""
    ok = 0
    todo = iter(range(count))
    url = f"http://127.0.0.1:{port}{path}"
    headers = {"content-type": "application/json"}
    connector = aiohttp.TCPConnector(limit=connections)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def worker() -> None:
            nonlocal ok
            for _ in todo:
                async with session.post(url, data=body, headers=headers) as response:
                    await response.read()
                    ok += response.status == 200

        await asyncio.gather(*(worker() for _ in range(connections)))
    return ok


def _wait_port(port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.5).close()
            return
        except OSError:
            time.sleep(0.2)
    raise SystemExit(f"the gateway under valgrind did not listen on {port} in {timeout}s")


def _instructions(
    work: Path, config: dict[str, Any], py: str, env: dict[str, str], count: int, request: str
) -> int:
    """Total instructions of one gateway run that serves ``count`` requests."""
    port = config["server"]["port"]
    (work / "vg.yaml").write_text(json.dumps(config))
    out = work / "vg.log"
    with out.open("wb") as log:
        gateway = subprocess.Popen(
            [
                "taskset",
                "-c",
                "0",
                "valgrind",
                "--tool=cachegrind",
                "--cache-sim=no",
                "--cachegrind-out-file=/dev/null",
                py,
                "-m",
                "proxyfleet",
                "serve",
                "-c",
                str(work / "vg.yaml"),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**env, "PYTHONHASHSEED": "0"},
        )
    try:
        _wait_port(port, 180)
        ok = asyncio.run(_load(port, "/v1/chat/completions", request, count, 64))
        if ok != count:
            raise SystemExit(f"only {ok} of {count} requests succeeded under valgrind")
    finally:
        gateway.send_signal(signal.SIGTERM)
        gateway.wait(300)
    found = re.search(r"I\s+refs:\s+([\d,]+)", out.read_text())
    if found is None:
        raise SystemExit(f"no instruction count from valgrind:\n{out.read_text()[-2000:]}")
    return int(found.group(1).replace(",", ""))


def debug_instructions(
    work: Path,
    config: dict[str, Any],
    py: str,
    env: dict[str, str],
    port: int,
    request: str,
    counts: tuple[int, int] = COUNTS,
) -> str:
    """One line: instructions per request with debug mode off and on."""
    if shutil.which("valgrind") is None:
        return "debug mode instructions per request: not measured (apt-get install valgrind)"
    per: dict[str, float] = {}
    for mode in ("off", "on"):
        variant = json.loads(json.dumps(config))
        variant["server"]["port"] = port
        variant["debug"] = {
            "enabled": mode == "on",
            "dir": str(work / "vg_debug_logs"),
            "flush_interval": DebugConfig().flush_interval * SLOWDOWN,
            "sample_above": 0,  # every request recorded (under valgrind it is below anyway)
        }
        low, high = (_instructions(work, variant, py, env, n, request) for n in counts)
        per[mode] = (high - low) / (counts[1] - counts[0])
    added = per["on"] - per["off"]
    return (
        f"debug mode instructions per request, every request recorded (valgrind, gateway "
        f"process, 64 connections): "
        f"{per['off']:,.0f} off, {per['on']:,.0f} on: {added:+,.0f} ({added / per['off']:+.2%})"
    )
