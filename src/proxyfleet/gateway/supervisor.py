"""``proxyfleet serve --workers N``: N gateway processes on one port, and their supervisor.

Each worker is a whole ``proxyfleet serve`` of its own, binding the port with ``SO_REUSEPORT``
so the kernel spreads connections over them; they share one pool through the shared store
(with the memory store every worker would hold its own pool, so ``--workers`` refuses it).
The supervisor holds the port reserved, starts the workers, says the gateway is serving once
every worker is, restarts a worker that dies (a worker that keeps dying at once waits longer
each time), and on SIGTERM or SIGINT passes the signal on and waits for every worker to drain.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from proxyfleet.errors import ListenError
from proxyfleet.logs import event

__all__ = ["READY_FD", "Supervisor", "reserve_port", "reuse_port_socket"]

_log = logging.getLogger("proxyfleet.gateway")

#: The environment variable naming the pipe a worker writes its URL to once it serves.
READY_FD = "_PROXYFLEET_READY_FD"  # not a PROXYFLEET_ config variable
_QUICK_DEATH = 10.0  # a worker dead within this many seconds of its start backs off
_BACKOFF_CAP = 30.0


def reuse_port_socket(host: str, port: int, *, listen: bool) -> socket.socket:
    """A socket bound to ``host:port`` with ``SO_REUSEPORT`` (every worker's, and the
    supervisor's, which never listens but keeps the port)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
        if listen:
            sock.listen(4096)
    except BaseException:
        sock.close()
        raise
    return sock


def reserve_port(host: str, port: int) -> socket.socket:
    """The port for the workers: free now (a plain bind, so a port another fleet shares with
    ``SO_REUSEPORT`` counts as taken too), then held with ``SO_REUSEPORT`` for the workers."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    probe = socket.socket(family, socket.SOCK_STREAM)
    try:
        probe.bind((host, port))
        port = probe.getsockname()[1]
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise ListenError(
                f"gateway: port {port} on {host} is already in use by another process; "
                "stop it or choose another port with --port"
            ) from exc
        raise ListenError(f"gateway: cannot listen on {host}:{port}: {exc.strerror}") from exc
    finally:
        probe.close()
    return reuse_port_socket(host, port, listen=False)


@dataclass
class _Worker:
    number: int
    popen: subprocess.Popen[bytes] | None = None
    ready_read: int = -1
    started: float = 0.0
    delay: float = 0.0  # before the next restart
    restarts: int = 0
    announced: bool = False
    buffer: bytes = field(default=b"")


class Supervisor:
    """Runs ``count`` workers, each the command ``command(number)`` returns."""

    def __init__(
        self,
        command: Callable[[int], Sequence[str]],
        count: int,
        *,
        drain_grace: float,
        announce: Callable[[str], None],
    ) -> None:
        self._command = command
        self._workers = [_Worker(n) for n in range(count)]
        self._drain_grace = drain_grace
        self._announce = announce
        self._stopping = False
        self._signal: int | None = None

    def run(self) -> int:
        """Until a signal; the exit code (a worker's when they all fail before serving)."""
        previous = {
            sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGTERM, signal.SIGINT)
        }
        try:
            for worker in self._workers:
                self._start(worker)
            return self._loop()
        finally:
            self._stop_all()
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _on_signal(self, sig: int, frame: object) -> None:
        self._signal = sig
        self._stopping = True

    def _start(self, worker: _Worker) -> None:
        read, write = os.pipe()
        env = dict(os.environ, **{READY_FD: str(write)})
        worker.popen = subprocess.Popen(
            list(self._command(worker.number)),
            env=env,
            pass_fds=(write,),
            stdin=subprocess.DEVNULL,
        )
        os.close(write)
        worker.ready_read, worker.started, worker.announced, worker.buffer = (
            read,
            time.monotonic(),
            False,
            b"",
        )

    def _loop(self) -> int:
        url = ""
        serving = False
        while not self._stopping:
            reading = {w.ready_read: w for w in self._workers if w.ready_read >= 0}
            with contextlib.suppress(InterruptedError):
                ready, _, _ = select.select(list(reading), [], [], 0.2)
                for fd in ready:
                    url = self._read_ready(reading[fd]) or url
            if not serving and all(w.announced for w in self._workers):
                serving = True
                self._announce(url)
            for worker in self._workers:
                code = worker.popen.poll() if worker.popen is not None else None
                if code is None or self._stopping:
                    continue
                if not serving and not any(w.announced for w in self._workers):
                    if all(
                        w.popen is not None and w.popen.poll() is not None for w in self._workers
                    ):
                        return code or 1  # none ever served: the workers said why
                    continue
                self._restart_later(worker, code)
            self._restart_due()
        return 0

    def _read_ready(self, worker: _Worker) -> str | None:
        try:
            chunk = os.read(worker.ready_read, 4096)
        except OSError:
            chunk = b""
        if not chunk:
            os.close(worker.ready_read)
            worker.ready_read = -1
            return None
        worker.buffer += chunk
        if b"\n" in worker.buffer and not worker.announced:
            worker.announced = True
            worker.delay = 0.0
            return worker.buffer.split(b"\n", 1)[0].decode()
        return None

    def _restart_later(self, worker: _Worker, code: int) -> None:
        if worker.popen is None:
            return
        lived = time.monotonic() - worker.started
        worker.delay = (
            min(_BACKOFF_CAP, max(1.0, worker.delay * 2)) if lived < _QUICK_DEATH else 0.0
        )
        event(
            _log,
            "worker_exited",
            worker=worker.number,
            pid=worker.popen.pid,
            code=code,
            restart_in=round(worker.delay, 1),
        )
        if worker.ready_read >= 0:
            os.close(worker.ready_read)
            worker.ready_read = -1
        worker.popen = None
        worker.started = time.monotonic()

    def _restart_due(self) -> None:
        now = time.monotonic()
        for worker in self._workers:
            if worker.popen is None and now - worker.started >= worker.delay:
                worker.restarts += 1
                self._start(worker)
                event(
                    _log,
                    "worker_restarted",
                    worker=worker.number,
                    pid=worker.popen.pid if worker.popen else None,
                )

    def _stop_all(self) -> None:
        """The signal passed on to every worker; each drains (``drain_grace``), then goes."""
        live = [w.popen for w in self._workers if w.popen is not None and w.popen.poll() is None]
        sig = self._signal or signal.SIGTERM
        for popen in live:
            with contextlib.suppress(ProcessLookupError):
                popen.send_signal(sig)
        deadline = time.monotonic() + self._drain_grace + 10.0
        for popen in live:
            try:
                popen.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                popen.kill()
                popen.wait(5)
        for worker in self._workers:
            if worker.ready_read >= 0:
                os.close(worker.ready_read)
                worker.ready_read = -1
        sys.stdout.flush()
