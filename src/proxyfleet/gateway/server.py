"""Run a :class:`Gateway` under uvicorn (uvloop + httptools), with our own signal handling.

SIGTERM or SIGINT: stop accepting, let in-flight requests finish for up to
``server.drain_grace`` seconds, cancel the rest, close the pool, exit 0. A second SIGINT forces
the exit. Handlers only record the signal; uvicorn's main loop acts on it.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
import socket
import sys
from collections.abc import Callable, Iterator, Sequence

import uvicorn
import uvloop

from proxyfleet.config.model import Config
from proxyfleet.gateway.app import Gateway
from proxyfleet.gateway.auth import load_keys
from proxyfleet.gateway.protocol import Limits, protocol_for
from proxyfleet.gateway.supervisor import READY_FD
from proxyfleet.logs import event
from proxyfleet.pool import BackendSpec

__all__ = ["GatewayServer", "check_serving", "run_gateway", "serve_gateway", "uvicorn_config"]

_log = logging.getLogger("proxyfleet.server")


#: The cyclic garbage collector's thresholds for a serving process. CPython's default (700
#: allocations between young collections) has a busy gateway collect every few requests,
#: promote in-flight request objects and run full collections every second or so; measured
#: with two gateways sharing a core under the same load, these cut CPU per request by ~10 %.
GC_THRESHOLDS = (10_000, 20, 20)


def tune_gc() -> None:
    """Collect less often: request objects mostly die by reference counting anyway."""
    gc.set_threshold(*GC_THRESHOLDS)


def check_serving(config: Config) -> None:
    """What must hold before listening (a ConfigError otherwise): the client keys file."""
    if config.server.auth_keys_file is not None:
        load_keys(config.server.auth_keys_file)


class GatewayServer(uvicorn.Server):
    """uvicorn's server with handlers that only record signals (and never re-raise them)."""

    def __init__(
        self,
        config: uvicorn.Config,
        on_signal: Callable[[], None],
        on_started: Callable[[], None] | None = None,
    ) -> None:
        super().__init__(config)
        self._on_signal = on_signal
        self._on_started = on_started
        self.received: list[int] = []

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        """uvicorn's startup (the gateway's lifespan, then listening), then ``on_started``:
        the gateway is announced only once it serves."""
        await super().startup(sockets)
        if self.started and self._on_started is not None:
            self._on_started()

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self._record, sig)
        try:
            yield
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)

    def _record(self, sig: int) -> None:
        self.received.append(sig)
        if self.should_exit and sig == signal.SIGINT:
            self.force_exit = True
        self.should_exit = True
        self._on_signal()


def uvicorn_config(gateway: Gateway, config: Config) -> uvicorn.Config:
    return uvicorn.Config(
        app=gateway,
        loop="none",
        http=protocol_for(
            Limits(
                header_timeout=config.server.header_timeout,
                body_timeout=config.server.body_timeout,
                max_header_bytes=config.server.max_header_bytes,
                max_headers=config.server.max_headers,
            )
        ),
        ws="websockets-sansio",
        lifespan="on",
        log_config=None,
        access_log=False,
        server_header=False,
        proxy_headers=False,
        timeout_graceful_shutdown=int(config.server.drain_grace),
        timeout_keep_alive=65,
        backlog=4096,
    )


async def serve_gateway(
    config: Config,
    backends: Sequence[BackendSpec],
    sock: socket.socket,
    announce: Callable[[str], None] | None = None,
) -> tuple[GatewayServer, Gateway]:
    gateway = Gateway(config, backends)
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    url = f"http://{shown}:{port}/v1"

    def started() -> None:
        if announce is not None:
            announce(url)
        event(_log, "listening", url=url, backends=len(backends))

    server = GatewayServer(uvicorn_config(gateway, config), gateway.begin_drain, started)
    try:
        await server.serve(sockets=[sock])
    except SystemExit:  # uvicorn's way to say the startup failed (exit code 3)
        if gateway.failure is None:
            raise
    return server, gateway


def run_gateway(config: Config, backends: Sequence[BackendSpec], sock: socket.socket) -> int:
    """Serve on ``sock`` until a signal; returns the process exit code."""
    tune_gc()

    def announce(url: str) -> None:
        ready_fd = os.environ.pop(READY_FD, None)
        if ready_fd is not None:  # a supervisor's worker: it announces the gateway, once
            with contextlib.suppress(OSError, ValueError):
                os.write(int(ready_fd), url.encode() + b"\n")
                os.close(int(ready_fd))
            return
        cap = config.pool.max_concurrency
        mode = "single-flight" if cap == 1 else f"up to {cap} per backend"
        print(
            f"proxyfleet serving {url} with {len(backends)} backends "
            f"({config.pool.selection}, {mode})\n",
            end="",  # one write, newline included: children may write to this stream too
            flush=True,
        )

    server, gateway = uvloop.run(serve_gateway(config, backends, sock, announce))
    if not server.started:
        failure = gateway.failure
        if failure is not None and isinstance(getattr(failure, "exit_code", None), int):
            print(f"proxyfleet: {failure}", file=sys.stderr)
            return int(failure.exit_code)  # type: ignore[attr-defined]
        print("proxyfleet: the gateway failed to start (see the log above)", file=sys.stderr)
        return 1
    return 0
