"""Held streams at scale: N concurrent slow SSE streams through one gateway process.

    uv run python bench/scale.py [--streams 10000] [--chunks 20] [--interval 1] [--ttft S]
                                 [--nginx] [--json]

The mock streams ``--chunks`` chunks ``--interval`` seconds apart to every request, the first
after ``--ttft`` seconds (``--interval`` unless given: a longer one keeps the first streams held
while the last are still opening on a slow machine, so that every one is held at once); the gateway
(``proxyfleet serve``, one process) pools it with room for every stream; this process opens the
streams in batches and reads each to its end. Printed: streams completed and failed, the peak
held at once as the client saw it and as the upstream counted it, the gateway's memory per held
stream (RSS with every stream held, less RSS before, over the streams) and its CPU per
stream-second (CPU time over the seconds the streams were held). With ``--nginx`` the same load
through nginx (one worker) is measured too, and the ratios are printed.

A proxied stream holds two descriptors in the proxy (client and upstream): a process whose hard
open-files limit cannot be raised serves at most about half that limit. ``--streams`` larger than
that is lowered to what fits, and the output says so. Exits 1 when any stream failed.
Only loopback addresses are used; every stream is bounded by ``--timeout``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import shutil
import sys
import tempfile
import time
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import cast

sys.path.insert(0, str(Path(__file__).resolve().parent))
from procs import children, cpu_seconds, free_port, process, rss_kb, wait_port

#: Descriptors a proxy process keeps besides its streams (listening sockets, loop, logs, pipes).
RESERVE_FDS = 100
BATCH = 250  # connections opened at once (the listen backlogs are 2048 and more)
REQUEST = json.dumps(
    {"model": "mock", "stream": True, "messages": [{"role": "user", "content": "hold"}]}
)
NGINX_CONF = """
worker_processes 1;
worker_rlimit_nofile {fds};
error_log {dir}/nginx-error.log warn;
pid {dir}/nginx.pid;
events {{ worker_connections {connections}; multi_accept on; }}
http {{
    access_log off;
    client_body_temp_path {dir}/body; proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fcgi; uwsgi_temp_path {dir}/uwsgi; scgi_temp_path {dir}/scgi;
    upstream mock {{ server 127.0.0.1:{upstream}; }}
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location / {{
            proxy_pass http://mock;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
            proxy_read_timeout 600s;
        }}
    }}
}}
"""


def hard_fd_limit() -> int:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return 1 << 20 if hard == resource.RLIM_INFINITY else hard


def streams_that_fit(wanted: int) -> int:
    """As many of ``wanted`` streams as a proxy's hard open-files limit holds (two fds each)."""
    return max(1, min(wanted, (hard_fd_limit() - RESERVE_FDS) // 2))


@dataclass
class Figures:
    """What one proxy did with the load."""

    proxy: str
    streams: int
    completed: int = 0
    failed: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    peak_held: int = 0  # streams with their head received and not yet ended, at once
    upstream_peak: int = 0  # the mock's own count of requests in flight at once
    seconds: float = 0.0
    opening_seconds: float = 0.0  # from the first connect to the last stream's head
    stream_seconds: float = 0.0
    rss_before_kb: int = 0
    rss_held_kb: int = 0
    cpu_seconds: float = 0.0

    @property
    def kb_per_stream(self) -> float:
        return (self.rss_held_kb - self.rss_before_kb) / max(self.peak_held, 1)

    @property
    def cpu_us_per_stream_second(self) -> float:
        return self.cpu_seconds / max(self.stream_seconds, 1e-9) * 1e6


class _Stream(asyncio.Protocol):
    """One streaming request read to its end: HTTP/1.1, a chunked SSE body ending in [DONE]."""

    def __init__(self, load: _Load) -> None:
        self.load = load
        self.transport: asyncio.Transport | None = None
        self.data = bytearray()
        self.head_at: float | None = None
        self.done: asyncio.Future[str | None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self.transport.write(self.load.request)

    def data_received(self, data: bytes) -> None:
        self.data += data
        if self.head_at is None:
            end = self.data.find(b"\r\n\r\n")
            if end < 0:
                return
            if not self.data.startswith(b"HTTP/1.1 200"):
                self._finish(f"status {bytes(self.data[9:12]).decode(errors='replace')}")
                return
            self.head_at = time.monotonic()
            self.load.held += 1
            self.load.heads += 1
            self.load.peak = max(self.load.peak, self.load.held)
            del self.data[: end + 4]
        if self.data.endswith(b"\r\n0\r\n\r\n"):
            self._finish(None if b"data: [DONE]" in self.data else "no [DONE]")
        elif len(self.data) > 1 << 20:
            self._finish("answer over 1 MiB")

    def connection_lost(self, exc: Exception | None) -> None:
        self._finish("connection closed before the end")

    def _finish(self, error: str | None) -> None:
        if self.done.done():
            return
        if self.head_at is not None:
            self.load.held -= 1
            self.load.stream_seconds += time.monotonic() - self.head_at
        if error is None and b'"error"' in self.data:
            error = "error event in the stream"
        self.done.set_result(error)
        if self.transport is not None:
            self.transport.close()


@dataclass
class _Load:
    request: bytes
    held: int = 0
    heads: int = 0  # streams whose head came, ended or not
    peak: int = 0
    stream_seconds: float = 0.0


async def drive(port: int, count: int, timeout: float, pid: int) -> Figures:
    """Open ``count`` streams to ``port`` and read them all; ``pid`` is the proxy measured."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # this client holds every stream
    figures = Figures(proxy="", streams=count)
    load = _Load(
        (
            f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(REQUEST)}\r\n\r\n{REQUEST}"
        ).encode()
    )
    loop = asyncio.get_running_loop()
    figures.rss_before_kb = rss_kb(pid)
    cpu_before = cpu_seconds(pid)
    started = time.monotonic()

    async def one() -> str | None:
        try:
            _, stream = await asyncio.wait_for(
                loop.create_connection(lambda: _Stream(load), "127.0.0.1", port), 30
            )
        except (OSError, TimeoutError) as exc:
            return f"connect: {type(exc).__name__}"
        try:
            return await asyncio.wait_for(asyncio.shield(stream.done), timeout)
        except TimeoutError:
            if stream.transport is not None:
                stream.transport.abort()
            return "timed out"

    async def sample_rss() -> None:
        while True:
            await asyncio.sleep(0.25)
            if load.held >= load.peak:  # as many held as ever: the figure to keep
                figures.rss_held_kb = max(figures.rss_held_kb, rss_kb(pid))

    sampler = asyncio.ensure_future(sample_rss())
    tasks = []
    for start in range(0, count, BATCH):
        batch = [asyncio.ensure_future(one()) for _ in range(start, min(count, start + BATCH))]
        tasks += batch
        await asyncio.wait(batch, timeout=0.05)  # let the batch connect before the next
    while load.heads < count and not all(task.done() for task in tasks):  # noqa: ASYNC110
        await asyncio.sleep(0.05)  # a figure only: polled, not waited for
    figures.opening_seconds = time.monotonic() - started
    results = await asyncio.gather(*tasks)
    sampler.cancel()
    figures.seconds = time.monotonic() - started
    figures.cpu_seconds = cpu_seconds(pid) - cpu_before
    figures.stream_seconds = load.stream_seconds
    figures.peak_held = load.peak
    for error in results:
        if error is None:
            figures.completed += 1
        else:
            figures.failed += 1
            figures.errors[error] = figures.errors.get(error, 0) + 1
    return figures


def upstream_peak(mock_port: int) -> int:
    """The mock's peak of requests in flight at once, and its counters reset for the next run."""
    base = f"http://127.0.0.1:{mock_port}/mock"
    with urllib.request.urlopen(f"{base}/stats", timeout=10) as answer:
        peak = int(json.load(answer)["peak"])
    reset = urllib.request.Request(f"{base}/reset", method="POST")
    with contextlib.suppress(OSError), urllib.request.urlopen(reset, timeout=10):
        pass
    return peak


@dataclass(frozen=True)
class Load:
    """The streams: how many, how long, and where the processes run."""

    streams: int = 10_000
    chunks: int = 20
    interval: float = 1.0  # seconds between chunks
    ttft: float | None = None  # seconds before the first chunk (``interval`` when None)
    timeout: float = 180.0  # seconds one stream may take
    nginx: bool = False
    proxy_pin: tuple[str, ...] = ()  # e.g. ("taskset", "-c", "0")
    other_pin: tuple[str, ...] = ()  # the mock's


def measure(load: Load, work: Path) -> list[Figures]:
    """The load through proxyfleet (and nginx when asked), against one mock."""
    py = sys.executable
    mock_port, pf_port, nginx_port = free_port(), free_port(), free_port()
    count = streams_that_fit(load.streams)
    room = count + RESERVE_FDS
    config = {
        "server": {"port": pf_port, "max_sessions": room},
        "pool": {
            "upstreams": [f"http://127.0.0.1:{mock_port}/v1"],
            "max_concurrency": room,
            "queue_limit": room,
        },
        "log": {"level": "warning"},
    }
    (work / "scale.yaml").write_text(json.dumps(config))
    mock = [
        *load.other_pin,
        py,
        "-m",
        "proxyfleet",
        "mock",
        "--port",
        str(mock_port),
        "--chunks",
        str(load.chunks),
        "--latency",
        str(load.interval),
        "--ttft",
        str(load.interval if load.ttft is None else load.ttft),
    ]
    out = []
    with process(mock, work / "mock.log"):
        wait_port(mock_port)
        serve = [*load.proxy_pin, py, "-m", "proxyfleet", "serve", "-c", str(work / "scale.yaml")]
        with process(serve, work / "gateway.log") as gateway:
            wait_port(pf_port)
            out.append(_run("proxyfleet", pf_port, count, load.timeout, gateway.pid, mock_port))
        nginx = shutil.which("nginx") or shutil.which("/usr/sbin/nginx")
        if load.nginx and nginx is not None:
            (work / "nginx.conf").write_text(
                NGINX_CONF.format(
                    dir=work,
                    port=nginx_port,
                    upstream=mock_port,
                    fds=hard_fd_limit(),
                    connections=3 * count + RESERVE_FDS,
                )
            )
            conf = str(work / "nginx.conf")
            run_nginx = [*load.proxy_pin, nginx, "-p", str(work), "-c", conf, "-g", "daemon off;"]
            with process(run_nginx, work / "nginx.log") as master:
                wait_port(nginx_port)
                worker = children(master.pid)[0]
                out.append(_run("nginx", nginx_port, count, load.timeout, worker, mock_port))
            if out[-1].failed:
                log = (work / "nginx-error.log").read_text(errors="replace").splitlines()
                print("nginx's error log ends:", *log[-5:], sep="\n  ", file=sys.stderr)
    return out


def _run(proxy: str, port: int, count: int, timeout: float, pid: int, mock_port: int) -> Figures:
    figures = asyncio.run(drive(port, count, timeout, pid))
    figures.proxy = proxy
    figures.upstream_peak = upstream_peak(mock_port)
    return figures


def scale_figures(load: Load) -> str:
    """The printed figures of one run (bench/run.py's section)."""
    work = Path(tempfile.mkdtemp(prefix="proxyfleet-scale-"))
    work.chmod(0o755)  # nginx workers run as an unprivileged user
    try:
        return report(measure(load, work), load.streams)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def report(all_figures: list[Figures], wanted: int) -> str:
    lines = []
    for f in all_figures:
        lowered = (
            f" (of {wanted} asked: the hard open-files limit holds {f.streams})"
            if f.streams < wanted
            else ""
        )
        errors = ", ".join(f"{n} {what}" for what, n in sorted(f.errors.items())) or "none"
        lines.append(
            f"{f.proxy}: {f.completed}/{f.streams} streams completed{lowered}, {f.failed} failed "
            f"({errors}); peak held {f.peak_held} at the client, {f.upstream_peak} upstream; "
            f"{f.seconds:.1f} s (all open after {f.opening_seconds:.1f} s); "
            f"memory per held stream {f.kb_per_stream:.1f} KB; "
            f"CPU per stream-second {f.cpu_us_per_stream_second:.0f} us"
        )
    if len(all_figures) == 2:
        pf, ng = all_figures
        lines.append(
            f"proxyfleet/nginx at {pf.streams} held streams: memory per stream "
            f"{pf.kb_per_stream / max(ng.kb_per_stream, 1e-9):.1f}x, CPU per stream-second "
            f"{pf.cpu_us_per_stream_second / max(ng.cpu_us_per_stream_second, 1e-9):.1f}x"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", type=int, default=10_000, help="streams held at once")
    parser.add_argument("--chunks", type=int, default=20, help="chunks per stream")
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between chunks")
    parser.add_argument(
        "--ttft", type=float, help="seconds before a stream's first chunk (default: --interval)"
    )
    parser.add_argument("--timeout", type=float, default=180.0, help="seconds a stream may take")
    parser.add_argument("--nginx", action="store_true", help="measure nginx with the same load")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument(
        "--pin",
        action="store_true",
        help="the proxy on core 0, the mock and this client on core 1 (as bench/run.py does)",
    )
    args = parser.parse_args(argv)
    if args.pin:
        os.sched_setaffinity(0, {1})
    pins = (("taskset", "-c", "0"), ("taskset", "-c", "1")) if args.pin else ((), ())
    load = Load(
        args.streams, args.chunks, args.interval, args.ttft, args.timeout, args.nginx, *pins
    )
    work = Path(tempfile.mkdtemp(prefix="proxyfleet-scale-"))
    work.chmod(0o755)  # nginx workers run as an unprivileged user
    try:
        figures = measure(load, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if args.json:
        derived = [
            {
                "kb_per_stream": f.kb_per_stream,
                "cpu_us_per_stream_second": f.cpu_us_per_stream_second,
            }
            for f in figures
        ]
        print(json.dumps([asdict(f) | more for f, more in zip(figures, derived, strict=True)]))
    else:
        print(report(figures, args.streams))
    return 1 if any(f.failed for f in figures) else 0


if __name__ == "__main__":
    with contextlib.suppress(ImportError):
        import uvloop

        uvloop.install()
    sys.exit(main())
