"""A real ``redis-server`` for tests: started on a free loopback port, nothing saved to disk.

:func:`shared` starts one per test session on first use (stopped at exit); tests that stop
or restart Redis start their own :class:`RedisServer`. Each test uses its own key prefix, so
tests sharing a server never see each other's pools. Without ``redis-server`` a test is
skipped with the reason, except under CI (``CI=true``, where .ci/run installs it): a failure.
"""

from __future__ import annotations

import atexit
import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import pytest

_PATH = os.environ.get("PATH", "") + ":/usr/sbin:/sbin:/usr/bin"


def redis_server_binary() -> str:
    found = shutil.which("redis-server", path=_PATH)
    if found is None:
        if os.environ.get("CI") == "true":
            pytest.fail("CI must provide redis-server (apt-get install redis-server; .ci/run)")
        pytest.skip("needs redis-server: apt-get install redis-server")
    return found


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisServer:
    """One ``redis-server`` process on 127.0.0.1; :meth:`stop` and :meth:`start` again keep
    its port (as a restarted Redis would)."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or _free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="proxyfleet-redis-"))
        self.popen: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        binary = redis_server_binary()
        log = (self.dir / "redis.log").open("ab")
        self.popen = subprocess.Popen(
            [binary, "--bind", "127.0.0.1", "--port", str(self.port), "--save", "",
             "--appendonly", "no", "--dir", str(self.dir), "--protected-mode", "yes"],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )  # fmt: skip
        log.close()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.ping():
                return self
            if self.popen.poll() is not None:
                raise AssertionError((self.dir / "redis.log").read_text(errors="replace"))
            time.sleep(0.02)
        raise AssertionError(f"redis-server did not answer on port {self.port}")

    def ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def command(self, *args: str) -> bytes:
        """One command over a plain socket (RESP), the raw reply."""
        parts = [f"*{len(args)}\r\n".encode()]
        for arg in args:
            data = arg.encode()
            parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as sock:
            sock.sendall(b"".join(parts))
            time.sleep(0.05)
            return sock.recv(1 << 20)

    def stop(self) -> None:
        if self.popen is not None and self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(10)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)
        self.popen = None

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


_SHARED: RedisServer | None = None


def shared() -> RedisServer:
    """The session's Redis, started on first use."""
    global _SHARED
    if _SHARED is None or _SHARED.popen is None or _SHARED.popen.poll() is not None:
        _SHARED = RedisServer().start()
        atexit.register(_SHARED.close)
    return _SHARED


def shared_pid() -> int | None:
    """The session's Redis process, if it runs (a child of the test process that no test
    started)."""
    popen = _SHARED.popen if _SHARED is not None else None
    return popen.pid if popen is not None and popen.poll() is None else None


def prefix() -> str:
    """A key prefix no other test uses."""
    return f"test-{uuid.uuid4().hex[:12]}"
