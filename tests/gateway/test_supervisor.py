"""``proxyfleet serve --workers N`` as a user runs it: refused with the memory store, N worker
processes on one port sharing one pool through a real redis-server (the upstream never sees two
requests at once on an account), a worker that dies restarted, SIGTERM draining them all."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import time
from pathlib import Path

import aiohttp

from tests import redisd
from tests.conftest import Processes, run_cli, wait_live
from tests.pool.test_redis import KEYS, peaks, redis_label, shared_config, stream


def children(pid: int) -> list[int]:
    return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def test_workers_with_the_memory_store_are_refused(procs: Processes, tmp_path: Path) -> None:
    mock = procs.mock()
    result = run_cli("serve", "--port", "0", "--workers", "2", "--upstream", mock.url)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "needs a shared pool store" in result.stderr
    assert "each worker would hold its own pool" in result.stderr


async def test_workers_share_one_port_and_one_pool(procs: Processes, tmp_path: Path) -> None:
    redis = redisd.shared()
    mock = procs.mock("--chunks", "4", "--latency", "0.02")
    config = shared_config(tmp_path, redis.url, redisd.prefix(), mock)
    supervisor = procs.spawn("serve", "--port", "0", "--workers", "2", "--config", str(config))
    line = supervisor.wait_for_line("proxyfleet serving ", timeout=60)
    assert line.endswith("with 2 workers"), line
    supervisor.url = line.split()[2]
    wait_live(supervisor)
    workers = children(supervisor.popen.pid)
    assert len(workers) == 2
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as session:
        statuses = await asyncio.gather(*(stream(session, supervisor.url) for _ in range(60)))
    assert statuses == [200] * 60
    assert peaks(mock) == {redis_label(k): 1 for k in KEYS.values()}
    # a worker killed is restarted, and serving goes on meanwhile
    os.kill(workers[0], signal.SIGKILL)
    for _ in range(200):
        now = children(supervisor.popen.pid)
        if len(now) == 2 and workers[0] not in now:
            break
        await asyncio.sleep(0.05)
    assert len(now) == 2, now
    assert workers[0] not in now, now
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as session:
        statuses = await asyncio.gather(*(stream(session, supervisor.url) for _ in range(20)))
    assert statuses == [200] * 20
    assert "worker_exited" in supervisor.output()
    # SIGTERM: every worker drains and goes, the port is free again
    port = int(supervisor.url.rsplit(":", 1)[1].removesuffix("/v1"))
    assert supervisor.stop(signal.SIGTERM, timeout=60) == 0
    assert all(_gone(pid) for pid in now)
    with socket.socket() as probe:  # nobody listens on it (old connections may linger)
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind(("127.0.0.1", port))
        probe.listen(1)


def _gone(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1][0] == "Z"
    except FileNotFoundError:
        return True


def test_workers_that_cannot_start_exit_with_their_reason(procs: Processes, tmp_path: Path) -> None:
    mock = procs.mock()
    dead = redisd.RedisServer()
    config = shared_config(tmp_path, dead.url, "x", mock)
    started = time.monotonic()
    result = run_cli("serve", "--port", "0", "--workers", "2", "--config", str(config), timeout=60)
    assert result.returncode == 2, result.stdout + result.stderr
    assert f"the pool store at {dead.url}" in result.stderr
    assert time.monotonic() - started < 30  # no restart loop


def test_a_port_in_use_is_refused_before_any_worker_starts(tmp_path: Path) -> None:
    redis = redisd.shared()
    config = tmp_path / "c.yaml"
    store = {"redis": {"url": redis.url, "key_prefix": redisd.prefix()}}
    config.write_text(
        json.dumps({"pool": {"upstreams": ["http://127.0.0.1:1/v1"], "store": store}})
    )
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        result = run_cli("serve", "--port", str(port), "--workers", "2", "--config", str(config))
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"port {port} on 127.0.0.1 is already in use" in result.stderr
