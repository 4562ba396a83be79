"""The shared pool store's cost: leases per second through Redis, and the gateway with it.

Printed: lease+release round trips per second from one process (``--store-tasks`` concurrent
loops over 64 single-flight backends, through a real ``redis-server`` on core 1; the memory
store's figure beside it), then requests/s through the gateway with the memory store, with the
Redis store, and with the Redis store and ``--workers 2``, in interleaved wrk rounds against
the same upstream, with the ratios redis/memory and 2 workers/1. The gateways with one process
run on core 0; two workers may use both cores (wrk and the upstream are on core 1 too: on a
two-core machine that figure says what a second worker buys when nothing else is free).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from procs import Result, children, cpu_seconds, free_port, median, process, wait_port, wrk
from proxyfleet.pool import Grant, Member, MemoryStore, Outcome, PoolStore
from proxyfleet.pool.health import HealthPolicy
from proxyfleet.pool.redis import RedisStore

__all__ = ["store_figures"]

MEMBERS = [Member(f"b{i:03d}", 1, "http", f"http://127.0.0.1:1/{i}") for i in range(64)]


async def _lease_loop(store: PoolStore, seconds: float, tasks: int) -> int:
    done = 0
    deadline = time.monotonic() + seconds

    async def one() -> None:
        nonlocal done
        while time.monotonic() < deadline:
            grant = await store.acquire("lru", holder="bench")
            if isinstance(grant, Grant):
                await store.release(grant, Outcome.SUCCESS)
                done += 1
            else:
                await asyncio.sleep(0)

    await asyncio.gather(*(one() for _ in range(tasks)))
    return done


def lease_rates(url: str, seconds: float, tasks: int) -> tuple[float, float]:
    """Lease+release per second: the Redis store, then the memory store."""

    async def both() -> tuple[float, float]:
        redis = RedisStore(MEMBERS, HealthPolicy(), url=url, key_prefix="bench-lease")
        async with redis:
            await _lease_loop(redis, 0.5, tasks)  # warm: scripts loaded, connections open
            shared = await _lease_loop(redis, seconds, tasks) / seconds
        async with MemoryStore(MEMBERS, HealthPolicy()) as memory:
            local = await _lease_loop(memory, seconds, tasks) / seconds
        return shared, local

    with contextlib.suppress(ImportError):
        import uvloop

        return uvloop.run(both())
    return asyncio.run(both())


@contextlib.contextmanager
def redis_server(work: Path) -> Iterator[tuple[str, int]]:
    """A ``redis-server`` on core 1, nothing saved: its URL and its pid."""
    binary = shutil.which("redis-server") or "/usr/bin/redis-server"
    port = free_port()
    args = ["taskset", "-c", "1", binary, "--bind", "127.0.0.1", "--port", str(port),
            "--save", "", "--appendonly", "no", "--dir", str(work)]  # fmt: skip
    with process(args, work / "redis.log") as redis:
        wait_port(port)
        yield f"redis://127.0.0.1:{port}/0", redis.pid


def store_figures(
    work: Path,
    config: dict[str, Any],
    lua: Path,
    path: str,
    py: str,
    env: dict[str, str],
    *,
    connections: int,
    duration: float,
    rounds: int,
    tasks: int,
) -> str:
    """The lines this part prints; ``config`` is the bench's gateway config (memory store),
    its upstream already running."""
    if shutil.which("redis-server") is None:
        return "store: skipped, redis-server is not installed (apt-get install redis-server)"
    lines = []
    with redis_server(work) as (url, redis_pid):
        affinity = _pin_self({0})
        try:
            shared, local = lease_rates(url, max(2.0, duration), tasks)
        finally:
            _pin_self(affinity)
        lines.append(
            f"store: lease+release per second from one process ({tasks} concurrent loops, 64 "
            f"backends): redis {shared:,.0f}/s, memory {local:,.0f}/s"
        )
        shared_config = json.loads(json.dumps(config))
        shared_config["pool"]["store"] = {"redis": {"url": url, "key_prefix": "bench-gateway"}}
        targets = {
            "memory": (config, "0", 1),
            "redis": (shared_config, "0", 1),
            "redis, 2 workers": (shared_config, "0,1", 2),
        }
        samples: dict[str, list[Result]] = {name: [] for name in targets}
        cpu: dict[str, list[tuple[float, float]]] = {name: [] for name in targets}
        with contextlib.ExitStack() as stack:
            ports, pids = {}, {}
            for name, (conf, cores, workers) in targets.items():
                port = free_port()
                conf_path = work / f"store-{name.replace(', ', '-').replace(' ', '')}.yaml"
                served = dict(conf, server=dict(conf["server"], port=port))
                conf_path.write_text(json.dumps(served))
                command = ["taskset", "-c", cores, py, "-m", "proxyfleet", "serve", "-c",
                           str(conf_path), "--workers", str(workers)]  # fmt: skip
                served_by = stack.enter_context(
                    process(command, work / f"{conf_path.stem}.log", env)
                )
                ports[name], pids[name] = port, served_by.pid
            for port in ports.values():
                wait_port(port, 60)
                wrk(f"http://127.0.0.1:{port}{path}", lua, connections, 1)  # warm up
            for _ in range(rounds):
                for name, port in ports.items():
                    url_of = f"http://127.0.0.1:{port}{path}"
                    before = _cpu(pids[name]), cpu_seconds(redis_pid)
                    result = wrk(url_of, lua, connections, duration)
                    samples[name].append(result)
                    spent = _cpu(pids[name]) - before[0], cpu_seconds(redis_pid) - before[1]
                    count = max(result.requests, 1)
                    cpu[name].append((1e6 * spent[0] / count, 1e6 * spent[1] / count))
    rows = {name: median(results) for name, results in samples.items()}
    for name, row in rows.items():
        lines.append(
            f"store: gateway {name}: {row.rps:,.0f} req/s, p50 {row.p50_ms:.2f} ms, "
            f"errors {row.errors}"
        )

    def ratio(a: str, b: str) -> str:
        values = sorted(x.rps / y.rps for x, y in zip(samples[a], samples[b], strict=True))
        return f"{values[len(values) // 2]:.3f} (rounds: {', '.join(f'{v:.3f}' for v in values)})"

    def per_request(name: str) -> str:
        gateway = sorted(g for g, _ in cpu[name])[len(cpu[name]) // 2]
        redis = sorted(r for _, r in cpu[name])[len(cpu[name]) // 2]
        shown = f"{name} {gateway:.0f} us"
        return shown if name == "memory" else f"{shown} + redis-server {redis:.0f} us"

    lines.append(
        "store: CPU per request (median of rounds): " + "; ".join(map(per_request, targets))
    )
    lines.append(f"store: ratio redis/memory: {ratio('redis', 'memory')}")
    lines.append(f"store: ratio 2 workers/1 (redis): {ratio('redis, 2 workers', 'redis')}")
    return "\n".join(lines)


def _cpu(pid: int) -> float:
    """CPU seconds of a gateway: its process and (with --workers) its workers."""
    return cpu_seconds(pid) + sum(cpu_seconds(child) for child in children(pid))


def _pin_self(cores: set[int]) -> set[int]:
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, cores)
    return before
