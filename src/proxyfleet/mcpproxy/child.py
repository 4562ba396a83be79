"""One stdio MCP server process: newline-delimited JSON-RPC on stdin/stdout.

It runs in its own process group, so stopping it reaches whatever it started: stdin is closed
first (the MCP way to ask a stdio server to exit), then SIGTERM, then SIGKILL after
``stop_timeout``; it is always waited for, so it never lingers as a zombie.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import signal
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from proxyfleet.errors import UpstreamGone
from proxyfleet.logs import event
from proxyfleet.mcpproxy.jsonrpc import InvalidMessage, Message, parse_line

__all__ = ["Child"]

_log = logging.getLogger("proxyfleet.mcp")
_LINE_LIMIT = 64 * 1024 * 1024  # one message may be large (a resource's contents)


class Child:
    def __init__(
        self,
        argv: Sequence[str],
        env: Mapping[str, str],
        cwd: Path | None,
        on_message: Callable[[Message], None],
        on_exit: Callable[[Child], None],
    ) -> None:
        self._argv = tuple(argv)
        self._env = dict(env)
        self._cwd = cwd
        self.on_message = on_message
        self.on_exit = on_exit
        self.pid: int | None = None
        self.returncode: int | None = None
        self.started = time.time()
        self.stopping = False
        self.stderr_tail: collections.deque[str] = collections.deque(maxlen=20)
        self._process: asyncio.subprocess.Process | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._exited = asyncio.Event()

    async def start(self) -> None:
        """Spawn it; OSError (no such command…) goes to the caller."""
        self._process = await asyncio.create_subprocess_exec(
            *self._argv,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=self._env,
            cwd=self._cwd,
            start_new_session=True,
            limit=_LINE_LIMIT,
        )
        self.pid = self._process.pid
        self.started = time.time()
        self._tasks = [
            asyncio.create_task(self._read_stdout(), name=f"mcp-stdout-{self.pid}"),
            asyncio.create_task(self._read_stderr(), name=f"mcp-stderr-{self.pid}"),
        ]

    @property
    def label(self) -> str:
        return f"pid {self.pid}"

    @property
    def alive(self) -> bool:
        return self._process is not None and self.returncode is None and not self._exited.is_set()

    def send(self, raw: bytes) -> None:
        """Write one message (a line) to the child's stdin."""
        process = self._process
        if process is None or process.stdin is None or not self.alive or self.stopping:
            raise UpstreamGone(self.describe_exit())
        try:
            process.stdin.write(raw + b"\n")
        except (BrokenPipeError, ConnectionResetError, RuntimeError) as exc:
            raise UpstreamGone(self.describe_exit()) from exc

    async def _read_stdout(self) -> None:
        process = self._process
        assert process is not None
        assert process.stdout is not None
        try:
            while line := await process.stdout.readline():
                line = line.strip()
                if not line:
                    continue
                try:
                    message = parse_line(line)
                except InvalidMessage as exc:
                    event(
                        _log,
                        "mcp_bad_line",
                        logging.WARNING,
                        pid=self.pid,
                        error=str(exc),
                        line=line[:200].decode("utf-8", "replace"),
                    )
                    continue
                self.on_message(message)
        except (ValueError, OSError) as exc:  # a line past the limit, a broken pipe
            event(_log, "mcp_stdout_failed", logging.WARNING, pid=self.pid, error=str(exc))
        finally:
            self.returncode = await process.wait()
            self._exited.set()
            self.on_exit(self)

    async def _read_stderr(self) -> None:
        process = self._process
        assert process is not None
        assert process.stderr is not None
        with contextlib.suppress(ValueError, OSError):
            while line := await process.stderr.readline():
                text = line.decode("utf-8", "replace").rstrip()
                self.stderr_tail.append(text[:500])
                event(_log, "mcp_stderr", logging.DEBUG, pid=self.pid, line=text[:500])

    def describe_exit(self) -> str:
        if self.returncode is None:
            return f"the MCP server (pid {self.pid}) is stopping"
        how = (
            f"was killed by signal {-self.returncode}"
            if self.returncode < 0
            else f"exited with code {self.returncode}"
        )
        last = f"; last stderr: {self.stderr_tail[-1]}" if self.stderr_tail else ""
        return f"the MCP server (pid {self.pid}) {how}{last}"

    async def stop(self, timeout: float) -> None:
        """Close stdin, then SIGTERM, then SIGKILL the process group; wait for the exit."""
        process = self._process
        if process is None:
            return
        self.stopping = True
        if process.stdin is not None and not process.stdin.is_closing():
            process.stdin.close()
        if not await self._wait(min(1.0, timeout)):
            self._signal(signal.SIGTERM)
            if not await self._wait(timeout):
                self._signal(signal.SIGKILL)
                await self._wait(None)
        self._signal(signal.SIGKILL)  # anything the server left behind in its group
        for task in self._tasks:
            if not task.done():
                await asyncio.wait([task], timeout=1.0)

    def _signal(self, sig: int) -> None:
        if self.pid is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pid, sig)

    async def _wait(self, timeout: float | None) -> bool:
        try:
            await asyncio.wait_for(self._exited.wait(), timeout)
        except TimeoutError:
            return False
        return True
