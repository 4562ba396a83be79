"""proxyfleet benchmark: requests/s and latency through proxyfleet vs nginx, in the same run.

    uv run python bench/run.py [--duration 8] [--connections 64] [--backends 64]
    uv run python bench/run.py --only throughput --baseline HEAD~3   # this tree vs a commit

Layout (2 cores): the proxy under test (nginx or proxyfleet) is pinned to core 0; the load
generator (wrk) and the upstream (nginx serving fixed answers) share core 1, so the upstream is
never the bottleneck. proxyfleet runs a strict single-flight pool over ``--backends`` backends
(one API key each). Printed: req/s and p50/p99 for direct, nginx and proxyfleet, non-streaming
and streaming (SSE), the ratio proxyfleet/nginx, the p50 latency each proxy adds at one
connection, RSS per idle streaming connection with ``--hold`` streams open, debug mode's
overhead (requests per CPU-second of debug-off and debug-on gateways loaded at once, for the
default settings and with every request recorded, the encoder process's CPU per request, and
instructions per request counted by valgrind when it is installed), the MCP latencies, and
``--scale`` slow SSE streams held at once through one gateway and through nginx (memory per held
stream, CPU per stream-second; see bench/scale.py), and the Redis store's lease rate and the
gateway's req/s with it and with two workers (bench/store.py).
With ``--baseline REV`` the gateway of that commit (its ``src/`` checked out into the bench's
directory, run with the same environment) is measured too, in the same interleaved rounds, so
a change's cost shows as two ratios against the same nginx.
Only loopback addresses are used; every run is bounded by ``--duration`` or by a request count.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from debug_instructions import debug_instructions
from mcp_latency import mcp_figures
from procs import Result, children, cpu_seconds, free_port, median, process, rss_kb, wait_port, wrk
from proxyfleet.config.model import DebugConfig
from scale import Load, scale_figures
from store import store_figures

SAMPLE_ABOVE = DebugConfig().sample_above

CHAT_JSON = json.dumps(
    {
        "id": "chatcmpl-bench",
        "object": "chat.completion",
        "created": 0,
        "model": "bench",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "hello from nginx"},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 5, "completion_tokens": 4, "total_tokens": 9},
    }
)
SSE_BODY = (
    "".join(
        f'data: {{"id":"c","object":"chat.completion.chunk","choices":[{{"index":0,'
        f'"delta":{{"content":"tok{i} "}}}}]}}\n\n'
        for i in range(8)
    )
    + "data: [DONE]\n\n"
)
REQ_PATH = "/v1/chat/completions"
REQUEST = json.dumps({"model": "bench", "messages": [{"role": "user", "content": "hi"}]})

# Shared head of both nginx configs: everything under the bench's own directory, no root needed.
NGINX_HEAD = """
worker_processes 1;
pid {dir}/{name}.pid;
error_log {dir}/{name}-error.log warn;
events {{ worker_connections 16384; }}
http {{
    access_log off;
    client_body_temp_path {dir}/tmp-body;
    proxy_temp_path {dir}/tmp-proxy;
    fastcgi_temp_path {dir}/tmp-fcgi;
    uwsgi_temp_path {dir}/tmp-uwsgi;
    scgi_temp_path {dir}/tmp-scgi;
    keepalive_requests 1000000;
"""

UPSTREAM_CONF = (
    NGINX_HEAD
    + """    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location = /v1/chat/completions {{
            default_type application/json;
            return 200 '{chat}';
        }}
        location = /v1/stream/completions {{
            default_type text/event-stream;
            return 200 '{sse}';
        }}
        location = /v1/models {{
            default_type application/json;
            return 200 '{{"object":"list","data":[{{"id":"bench","object":"model"}}]}}';
        }}
    }}
}}
"""
)

PROXY_CONF = (
    NGINX_HEAD
    + """
    upstream backend {{
        server 127.0.0.1:{upstream};
        keepalive 256;
    }}
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location / {{
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
            proxy_read_timeout 3600s;
        }}
    }}
}}
"""
)

POST_LUA = """
wrk.method = "POST"
wrk.body = '{body}'
wrk.headers["Content-Type"] = "application/json"
"""


async def hold_streams(port: int, path: str, count: int, stop: asyncio.Event) -> int:
    """Open ``count`` streaming requests and keep them open until ``stop``; returns how many got
    their response headers."""
    writers = []
    request = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(REQUEST)}\r\n\r\n{REQUEST}"
    ).encode()

    async def one() -> bool:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writers.append(writer)
        writer.write(request)
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 60)
        return head.startswith(b"HTTP/1.1 200")

    results = []
    for start in range(0, count, 200):
        results += await asyncio.gather(
            *(one() for _ in range(start, min(count, start + 200))), return_exceptions=True
        )
    await stop.wait()
    for writer in writers:
        writer.close()
    return sum(1 for r in results if r is True)


def measure_rss(pid: int, port: int, path: str, count: int) -> tuple[float, int]:
    async def run() -> tuple[float, int]:
        stop = asyncio.Event()
        await asyncio.sleep(0.5)
        before = rss_kb(pid)
        holder = asyncio.ensure_future(hold_streams(port, path, count, stop))
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            await asyncio.sleep(1.0)
            if holder.done():
                break
            if _established(port) >= count:
                break
        await asyncio.sleep(1.0)
        during = rss_kb(pid)
        stop.set()
        ok = await holder
        return (during - before) / max(ok, 1), ok

    return asyncio.run(run())


def _established(port: int) -> int:
    hexport = f":{port:04X}"
    count = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[1].endswith(hexport) and fields[3] == "01":
            count += 1
    return count


def pinned_nginx(core: str, nginx: str, work: Path, conf: str) -> list[str]:
    """nginx in the foreground on one core, everything under the bench's directory."""
    return ["taskset", "-c", core, nginx, "-p", str(work), "-c", conf, "-g", "daemon off;"]


def pinned_proxyfleet(core: str, py: str, *args: str) -> list[str]:
    return ["taskset", "-c", core, py, "-m", "proxyfleet", *args]


def nginx_worker(master_pid: int) -> int:
    return children(master_pid)[0]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per wrk run")
    parser.add_argument(
        "--rounds", type=int, default=3, help="interleaved nginx/proxyfleet rounds per mode"
    )
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--backends", type=int, default=64, help="single-flight backends")
    parser.add_argument("--hold", type=int, default=2000, help="idle streams for the RSS figure")
    parser.add_argument(
        "--debug-pairs",
        type=int,
        default=15,
        help="debug-off/debug-on pairs (fresh gateways loaded at once) for the overhead figures",
    )
    parser.add_argument(
        "--only",
        choices=("all", "throughput", "debug", "mcp", "scale", "store"),
        default="all",
        help="'throughput': only the req/s table and its ratios; 'debug': only the debug-mode "
        "overhead pairs; 'mcp': only the MCP latencies; 'scale': only the held streams; "
        "'store': only the Redis store's figures",
    )
    parser.add_argument(
        "--store-tasks",
        type=int,
        default=32,
        metavar="N",
        help="concurrent lease+release loops for the store's lease rate",
    )
    parser.add_argument(
        "--scale",
        type=int,
        default=10_000,
        metavar="N",
        help="slow SSE streams held at once through one gateway and through nginx: memory per "
        "held stream and CPU per stream-second (bench/scale.py; lowered to what the hard "
        "open-files limit holds)",
    )
    parser.add_argument(
        "--scale-chunks", type=int, default=20, help="chunks per held stream, one a second"
    )
    parser.add_argument(
        "--baseline",
        metavar="REV",
        help="also measure the gateway of this git commit, interleaved with this tree's",
    )
    parser.add_argument(
        "--valgrind-requests",
        type=lambda text: tuple(int(n) for n in text.split(",")),
        default=(500, 3000),
        metavar="N1,N2",
        help="requests of the two valgrind runs per debug mode (instructions per request)",
    )
    parser.add_argument("--mcp-sessions", type=int, default=20, help="sessions started per kind")
    parser.add_argument("--mcp-calls", type=int, default=300, help="tool calls per path")
    return parser


def main() -> int:
    args = _parser().parse_args()
    os.environ["PATH"] = os.environ.get("PATH", "") + ":/usr/sbin:/sbin"  # Debian's nginx
    for tool in ("nginx", "wrk", "taskset"):
        if shutil.which(tool) is None:
            raise SystemExit(f"bench needs {tool}: apt-get install nginx-light wrk util-linux")
    # valgrind is optional: without it the instructions-per-request line says how to get it
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    nginx = shutil.which("nginx")
    assert nginx is not None
    work = Path(tempfile.mkdtemp(prefix="proxyfleet-bench-"))
    work.chmod(0o755)  # nginx workers run as an unprivileged user
    up_port, nginx_port, pf_port, hold_port, mock_port = (free_port() for _ in range(5))
    (work / "upstream.conf").write_text(
        UPSTREAM_CONF.format(dir=work, name="upstream", port=up_port, chat=CHAT_JSON, sse=SSE_BODY)
    )
    (work / "proxy.conf").write_text(
        PROXY_CONF.format(dir=work, name="proxy", port=nginx_port, upstream=up_port)
    )
    lua = work / "post.lua"
    lua.write_text(POST_LUA.format(body=REQUEST))
    backends = [{"id": f"b{i:03d}", "api_key": f"sk-bench-{i:03d}"} for i in range(args.backends)]
    config = {
        "server": {"port": pf_port, "max_sessions": 100000},
        "upstream": {"base_url": f"http://127.0.0.1:{up_port}/v1"},
        "pool": {"backends": backends, "queue_limit": 100000, "lease_timeout": 60},
        "log": {"level": "warning"},
    }
    (work / "proxyfleet.yaml").write_text(json.dumps(config))
    hold_config = {
        "server": {"port": hold_port, "max_sessions": 100000},
        "pool": {
            "upstreams": [f"http://127.0.0.1:{mock_port}/v1"],
            "max_concurrency": 100000,
            "queue_limit": 100000,
        },
        "log": {"level": "warning"},
    }
    (work / "hold.yaml").write_text(json.dumps(hold_config))
    py = sys.executable
    env = dict(os.environ)
    d, c = args.duration, args.connections
    base_port = free_port()
    baseline_env = None if args.baseline is None else checkout(args.baseline, work, env)
    if args.only in ("debug", "mcp", "scale", "store"):
        print(only(args, work, nginx, up_port, config, lua, py, env))
        shutil.rmtree(work, ignore_errors=True)
        return 0
    rows: dict[str, dict[str, Result]] = {"non-streaming": {}, "streaming": {}}
    ratios: dict[str, list[float]] = {}
    paths = {"non-streaming": REQ_PATH, "streaming": "/v1/stream/completions"}
    with contextlib.ExitStack() as stack:
        stack.enter_context(
            process(
                pinned_nginx("1", nginx, work, str(work / "upstream.conf")),
                work / "upstream.log",
            )
        )
        stack.enter_context(
            process(pinned_nginx("0", nginx, work, str(work / "proxy.conf")), work / "nginx.log")
        )
        stack.enter_context(
            process(
                pinned_proxyfleet("0", py, "serve", "-c", str(work / "proxyfleet.yaml")),
                work / "proxyfleet.log",
                env,
            )
        )
        targets = {"direct": up_port, "nginx": nginx_port, "proxyfleet": pf_port}
        if baseline_env is not None:
            stack.enter_context(
                process(
                    pinned_proxyfleet(
                        "0",
                        py,
                        "serve",
                        "-c",
                        str(work / "proxyfleet.yaml"),
                        "--port",
                        str(base_port),
                    ),
                    work / "baseline.log",
                    baseline_env,
                )
            )
            targets["baseline"] = base_port
        for port in targets.values():
            wait_port(port)
        for port in targets.values():  # warm up every path
            wrk(f"http://127.0.0.1:{port}{paths['non-streaming']}", lua, c, 1)
        for mode, path in paths.items():
            samples: dict[str, list[Result]] = {name: [] for name in targets}
            for _ in range(args.rounds):  # interleaved, so drift hits every target alike
                for name, port in targets.items():
                    samples[name].append(wrk(f"http://127.0.0.1:{port}{path}", lua, c, d))
            rows[mode] = {name: median(results) for name, results in samples.items()}
            for name in targets.keys() - {"direct", "nginx"}:
                ratios[f"{name}/nginx, {mode}"] = sorted(
                    p.rps / n.rps for p, n in zip(samples[name], samples["nginx"], strict=True)
                )
        if args.only == "throughput":
            print_table(rows, ratios, c, d, args)
            shutil.rmtree(work, ignore_errors=True)
            return 0
        single = {
            name: wrk(f"http://127.0.0.1:{port}{paths['non-streaming']}", lua, 1, d / 2)
            for name, port in targets.items()
        }
        with urllib.request.urlopen(f"http://127.0.0.1:{pf_port}/admin/pool") as response:
            pool = json.load(response)
        overhead = debug_overhead(
            work, config, lua, c, d, args.debug_pairs, py, env, paths["non-streaming"]
        )
        overhead += "\n" + debug_instructions(
            work, config, py, env, free_port(), REQUEST, args.valgrind_requests
        )
        store = shared_store(args, work, config, lua, py, env)
    print_table(rows, ratios, c, d, args)
    base = single["direct"].p50_ms
    print(
        f"p50 added latency at 1 connection: nginx {single['nginx'].p50_ms - base:+.3f} ms, "
        f"proxyfleet {single['proxyfleet'].p50_ms - base:+.3f} ms"
    )
    served = [b["leases_served"] for b in pool["backends"]]
    print(
        f"pool: {len(served)} backends, leases served min {min(served)} max {max(served)}, "
        f"failures {sum(b['failures'] for b in pool['backends'])}"
    )
    print(overhead)
    print_rss(args.hold, work, hold_port, mock_port, py, env)
    print("\n".join(mcp_figures(work, free_port(), free_port(), args.mcp_sessions, args.mcp_calls)))
    print(store)
    print(held_streams(args))
    shutil.rmtree(work, ignore_errors=True)
    return 0


def checkout(rev: str, work: Path, env: dict[str, str]) -> dict[str, str]:
    """``src/`` of commit ``rev`` under the bench's directory; the environment that runs it."""
    repo = Path(__file__).resolve().parent.parent
    target = work / "baseline"
    target.mkdir()
    archive = subprocess.run(
        ["git", "-C", str(repo), "archive", rev, "src"], capture_output=True, check=False
    )
    if archive.returncode != 0:
        raise SystemExit(f"--baseline {rev}: {archive.stderr.decode().strip()}")
    subprocess.run(["tar", "-x", "-C", str(target)], input=archive.stdout, check=True)
    described = subprocess.run(
        ["git", "-C", str(repo), "rev-parse", "--short", rev], capture_output=True, text=True
    ).stdout.strip()
    print(f"baseline: {rev} ({described}) from {target / 'src'}", flush=True)
    return {**env, "PYTHONPATH": str(target / "src")}


def print_table(
    rows: dict[str, dict[str, Result]],
    ratios: dict[str, list[float]],
    connections: int,
    duration: float,
    args: argparse.Namespace,
) -> None:
    print(
        f"\nproxyfleet bench: {connections} connections, {duration:g}s per run, {args.rounds} "
        f"interleaved rounds (medians shown), proxies on core 0, wrk + upstream nginx on core "
        f"1, pool of {args.backends} single-flight backends\n"
    )
    print(f"{'mode':15} {'target':11} {'req/s':>10} {'p50 ms':>9} {'p99 ms':>9} {'errors':>7}")
    for mode, results in rows.items():
        for name, r in results.items():
            print(
                f"{mode:15} {name:11} {r.rps:10.0f} {r.p50_ms:9.2f} {r.p99_ms:9.2f} {r.errors:7d}"
            )
    print()
    for what, values in sorted(ratios.items(), key=lambda item: item[0].split(", ")[::-1]):
        middle = values[len(values) // 2]
        print(f"ratio {what}: {middle:.3f}  (rounds: {', '.join(f'{v:.3f}' for v in values)})")


def shared_store(
    args: argparse.Namespace,
    work: Path,
    config: dict[str, Any],
    lua: Path,
    py: str,
    env: dict[str, str],
) -> str:
    """The Redis store's lease rate and the gateway's req/s with it (bench/store.py)."""
    return store_figures(
        work,
        config,
        lua,
        REQ_PATH,
        py,
        env,
        connections=args.connections,
        duration=args.duration,
        rounds=args.rounds,
        tasks=args.store_tasks,
    )


def held_streams(args: argparse.Namespace) -> str:
    """``--scale`` slow streams through proxyfleet and nginx on core 0; the mock and the client
    (this process, for the while) on core 1."""
    load = Load(
        streams=args.scale,
        chunks=args.scale_chunks,
        nginx=True,
        proxy_pin=("taskset", "-c", "0"),
        other_pin=("taskset", "-c", "1"),
    )
    affinity = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {1})
    try:
        return scale_figures(load)
    finally:
        os.sched_setaffinity(0, affinity)


def only(
    args: argparse.Namespace,
    work: Path,
    nginx: str,
    up_port: int,
    config: dict[str, Any],
    lua: Path,
    py: str,
    env: dict[str, str],
) -> str:
    """One part of the bench alone: ``--only debug``, ``mcp``, ``scale`` or ``store``."""
    if args.only == "scale":
        return held_streams(args)
    if args.only == "store":
        with process(
            pinned_nginx("1", nginx, work, str(work / "upstream.conf")), work / "upstream.log"
        ):
            wait_port(up_port)
            return shared_store(args, work, config, lua, py, env)
    if args.only == "mcp":
        return "\n".join(
            mcp_figures(work, free_port(), free_port(), args.mcp_sessions, args.mcp_calls)
        )
    with process(
        pinned_nginx("1", nginx, work, str(work / "upstream.conf")), work / "upstream.log"
    ):
        wait_port(up_port)
        overhead = debug_overhead(
            work, config, lua, args.connections, args.duration, args.debug_pairs, py, env, REQ_PATH
        )
        return (
            overhead
            + "\n"
            + debug_instructions(
                work, config, py, env, free_port(), REQUEST, args.valgrind_requests
            )
        )


def debug_overhead(
    work: Path,
    config: dict[str, Any],
    lua: Path,
    connections: int,
    duration: float,
    pairs: int,
    py: str,
    env: dict[str, str],
    path: str,
) -> str:
    """Debug mode's cost in throughput, as the median of ``pairs`` off/on pairs, for the
    default settings (ordinary requests sampled above ``debug.sample_above`` per second) and
    for every request recorded (``sample_above: 0``).

    At 64 connections the gateway keeps its core busy, so its throughput is requests per
    CPU-second of that core; that is what is compared. Each pair is a debug-off and a debug-on
    gateway loaded at the same time (a wrk at ``connections`` each), both on core 0, so
    whatever slows the machine meanwhile slows both alike: run one after the other, two runs on
    this kind of VM differ by up to 10 %, far more than the 1 % looked for. Their req/s are
    printed too; they compare only roughly, as the scheduler need not split the shared core
    evenly. Fresh processes every round (off, sampled, full; started and loaded in turns, so
    neither side is always first), because two identical processes also differ by a percent
    or two (where their memory lands): the median over pairs takes that out. Also printed:
    the encoder process's CPU per request; it runs on core 1 with wrk and the upstream
    (``debug.encoder_cpus``), off the gateway's core.
    """
    settings: dict[str, dict[str, Any]] = {
        "off": {"enabled": False},
        "on": {"enabled": True},
        "full": {"enabled": True, "sample_above": 0},
    }
    ports = {mode: free_port() for mode in settings}
    for mode, port in ports.items():
        variant = json.loads(json.dumps(config))
        variant["server"]["port"] = port
        variant["debug"] = {
            **settings[mode],
            "dir": str(work / f"debug_logs_{mode}"),
            "encoder_cpus": [1],
        }
        (work / f"debug-{mode}.yaml").write_text(json.dumps(variant))
    urls = {mode: f"http://127.0.0.1:{port}{path}" for mode, port in ports.items()}
    losses: dict[str, list[float]] = {"on": [], "full": []}
    rates: dict[str, list[tuple[float, float]]] = {"on": [], "full": []}
    encoder_us: dict[str, list[float]] = {"on": [], "full": []}

    def load(modes: tuple[str, ...], seconds: float) -> dict[str, Result]:
        with concurrent.futures.ThreadPoolExecutor(len(modes)) as pool:
            done = pool.map(lambda mode: wrk(urls[mode], lua, connections, seconds), modes)
            return dict(zip(modes, done, strict=True))

    for pair in range(pairs):
        order = list(settings) if pair % 2 == 0 else list(settings)[::-1]
        with contextlib.ExitStack() as stack:
            pids = {
                mode: stack.enter_context(
                    process(
                        pinned_proxyfleet("0", py, "serve", "-c", str(work / f"debug-{mode}.yaml")),
                        work / f"debug-{mode}.log",
                        env,
                    )
                ).pid
                for mode in order
            }
            for port in ports.values():
                wait_port(port)
            load(tuple(settings), 1)  # warm-up
            encoders = {mode: children(pids[mode])[0] for mode in losses}
            for mode in sorted(losses, reverse=pair % 2 == 1):
                counted = {"off": pids["off"], mode: pids[mode], "encoder": encoders[mode]}
                before = {name: cpu_seconds(pid) for name, pid in counted.items()}
                results = load(("off", mode) if pair % 2 == 0 else (mode, "off"), duration)
                spent = {name: cpu_seconds(pid) - before[name] for name, pid in counted.items()}
                per_second = {m: results[m].requests / spent[m] for m in ("off", mode)}
                losses[mode].append(1 - per_second[mode] / per_second["off"])
                rates[mode].append((results["off"].rps, results[mode].rps))
                encoder_us[mode].append(spent["encoder"] / results[mode].requests * 1e6)

    def line(mode: str, what: str) -> str:
        shown = ", ".join(f"{off:.0f}/{on:.0f}" for off, on in rates[mode])
        return (
            f"debug mode overhead at {connections} connections, {what}: "
            f"{statistics.median(losses[mode]):+.2%} throughput lost (requests per CPU-second "
            f"of the gateway, median of {pairs} off/on pairs loaded at once on core 0; pairs: "
            f"{', '.join(f'{loss:+.2%}' for loss in losses[mode])}; req/s off/on: {shown}); "
            f"encoder {statistics.median(encoder_us[mode]):.1f} us per request on core 1"
        )

    return (
        line("on", f"default settings (ordinary requests sampled above {SAMPLE_ABOVE:g}/s)")
        + "\n"
        + line("full", "every request recorded (sample_above: 0)")
    )


def print_rss(
    hold: int, work: Path, hold_port: int, mock_port: int, py: str, env: dict[str, str]
) -> None:
    """RSS per idle streaming connection: streams whose upstream sends headers and then waits."""
    nginx = shutil.which("nginx")
    assert nginx is not None
    (work / "hold-nginx.conf").write_text(
        PROXY_CONF.format(dir=work, name="hold", port=hold_port, upstream=mock_port)
    )
    with process(
        pinned_proxyfleet("1", py, "mock", "--port", str(mock_port), "--ttft", "600"),
        work / "hold-mock.log",
        env,
    ):
        wait_port(mock_port)
        with process(
            pinned_nginx("0", nginx, work, str(work / "hold-nginx.conf")),
            work / "hold-nginx.log",
        ) as proc:
            wait_port(hold_port)
            nginx_kb, nginx_ok = measure_rss(
                nginx_worker(proc.pid), hold_port, "/v1/chat/completions", hold
            )
        with process(
            pinned_proxyfleet("0", py, "serve", "-c", str(work / "hold.yaml")),
            work / "hold-pf.log",
            env,
        ) as proc:
            wait_port(hold_port)
            pf_kb, pf_ok = measure_rss(proc.pid, hold_port, "/v1/chat/completions", hold)
    print(
        f"RSS per idle streaming connection ({hold} held): nginx {nginx_kb:.1f} KB "
        f"({nginx_ok} open), proxyfleet {pf_kb:.1f} KB ({pf_ok} open)"
    )


if __name__ == "__main__":
    sys.exit(main())
