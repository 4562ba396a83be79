"""One stdio MCP server process: newline-delimited JSON-RPC on stdin/stdout.

Nothing but its stdin, stdout and stderr crosses into it: it is spawned with ``close_fds``
whatever the event loop (uvloop's own spawner passes on every inheritable descriptor, so a
process the server starts could hold the gateway's port, or another child's pipes, after the
gateway is gone).

Its exit is watched on the process itself (a pidfd where the system has them), never inferred
from its stdout closing: a process it started may keep that open long after it died. When it
exits, what it left in its process group is killed, what it wrote before its end is still read
(for :data:`_PIPES_GRACE` at most, should something outside its group hold the pipes), then its
pipes are closed and ``on_exit`` is called.

It runs in its own process group, so stopping it reaches whatever it started: stdin is closed
first (the MCP way to ask a stdio server to exit), then SIGTERM, then SIGKILL after
``stop_timeout``; it is always waited for, so it never lingers as a zombie. The group is only
ever signalled while the server is not reaped yet, so its id cannot belong to anyone else.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from proxyfleet.errors import UpstreamGone
from proxyfleet.logs import event
from proxyfleet.mcpproxy.jsonrpc import InvalidMessage, Message, parse_line

__all__ = ["Child"]

_log = logging.getLogger("proxyfleet.mcp")
_LINE_LIMIT = 64 * 1024 * 1024  # one message may be large (a resource's contents)
_PIPES_GRACE = 1.0  # seconds to read what an exited server wrote, if its pipes stay open
_POLL = 0.1  # seconds between looks at the process, where the system has no pidfd


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
        self.spoke = False  # it has written a message: its server did start
        self.stderr_tail: collections.deque[str] = collections.deque(maxlen=20)
        self._process: subprocess.Popen[bytes] | None = None
        self._stdin: asyncio.WriteTransport | None = None
        self._pipes: list[asyncio.BaseTransport] = []
        self._readers: list[asyncio.Task[None]] = []
        self._watcher: asyncio.Task[None] | None = None
        self._exited = asyncio.Event()

    async def start(self) -> None:
        """Spawn it; OSError (no such command…) goes to the caller."""
        # Not the loop's subprocess_exec: uvloop's has no close_fds. Popen forks and execs at
        # once (an exec failure is raised here), it does not wait for the child.
        process = subprocess.Popen(  # noqa: ASYNC220
            self._argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=self._env,
            cwd=self._cwd,
            close_fds=True,  # the default, said aloud: only fds 0, 1 and 2 cross
            start_new_session=True,
            bufsize=0,
        )
        self._process = process
        self.pid = process.pid
        self.started = time.time()
        assert process.stdin is not None
        assert process.stdout is not None
        assert process.stderr is not None
        loop = asyncio.get_running_loop()
        stdout = asyncio.StreamReader(limit=_LINE_LIMIT)
        stderr = asyncio.StreamReader(limit=_LINE_LIMIT)
        try:
            for reader, pipe in ((stdout, process.stdout), (stderr, process.stderr)):
                transport, _ = await loop.connect_read_pipe(_protocol(reader), pipe)
                self._pipes.append(transport)
            self._stdin, _ = await loop.connect_write_pipe(asyncio.BaseProtocol, process.stdin)
            self._pipes.append(self._stdin)
        except BaseException:
            self._abandon(process)
            raise
        self._readers = [
            asyncio.create_task(self._read_stdout(stdout), name=f"mcp-stdout-{self.pid}"),
            asyncio.create_task(self._read_stderr(stderr), name=f"mcp-stderr-{self.pid}"),
        ]
        self._watcher = asyncio.create_task(self._watch(process), name=f"mcp-exit-{self.pid}")

    def _abandon(self, process: subprocess.Popen[bytes]) -> None:
        """Its pipes could not be set up: kill it and reap it at once."""
        self._signal(signal.SIGKILL)
        self.returncode = process.wait()
        for pipe in self._pipes:
            pipe.close()
        for stream in (process.stdin, process.stdout, process.stderr):
            if stream is not None:
                stream.close()
        self._exited.set()

    @property
    def label(self) -> str:
        return f"pid {self.pid}"

    @property
    def alive(self) -> bool:
        return self._process is not None and self.returncode is None and not self._exited.is_set()

    def send(self, raw: bytes) -> None:
        """Write one message (a line) to the child's stdin."""
        stdin = self._stdin
        if stdin is None or stdin.is_closing() or not self.alive or self.stopping:
            raise UpstreamGone(self.describe_exit())
        stdin.write(raw + b"\n")

    async def _watch(self, process: subprocess.Popen[bytes]) -> None:
        """The process's exit, seen on the process: then its group, its pipes, ``on_exit``."""
        await _until_exited(process.pid)
        self._signal(signal.SIGKILL)  # what it left in its group: it may hold the pipes open
        self.returncode = process.wait()  # it has exited: reaped at once
        running = [task for task in self._readers if not task.done()]
        if running:
            await asyncio.wait(running, timeout=_PIPES_GRACE)
        for task in self._readers:
            task.cancel()
        await asyncio.gather(*self._readers, return_exceptions=True)
        for pipe in self._pipes:
            pipe.close()
        self._exited.set()
        self.on_exit(self)

    async def _read_stdout(self, stdout: asyncio.StreamReader) -> None:
        try:
            while line := await stdout.readline():
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
                self.spoke = True
                self.on_message(message)
        except (ValueError, OSError) as exc:  # a line past the limit, a broken pipe
            event(_log, "mcp_stdout_failed", logging.WARNING, pid=self.pid, error=str(exc))

    async def _read_stderr(self, stderr: asyncio.StreamReader) -> None:
        with contextlib.suppress(ValueError, OSError):
            while line := await stderr.readline():
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
        if self._process is None:
            return
        self.stopping = True
        if self._stdin is not None and not self._stdin.is_closing():
            self._stdin.close()
        if not await self._wait(min(1.0, timeout)):
            self._signal(signal.SIGTERM)
            if not await self._wait(timeout):
                self._signal(signal.SIGKILL)
                await self._wait(None)
        if self._watcher is not None:
            await asyncio.wait([self._watcher])

    def _signal(self, sig: int) -> None:
        """Signal the process group, while its leader is not reaped (its id is still ours)."""
        if self.pid is not None and self.returncode is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pid, sig)

    async def _wait(self, timeout: float | None) -> bool:
        try:
            await asyncio.wait_for(self._exited.wait(), timeout)
        except TimeoutError:
            return False
        return True


async def _until_exited(pid: int) -> None:
    """Until the process ``pid`` (a child of ours) has exited, leaving it unreaped."""
    try:
        pidfd = os.pidfd_open(pid)
    except (AttributeError, OSError):  # no pidfds here: look now and then
        while not _has_exited(pid):  # noqa: ASYNC110 (nothing to wait on but the process)
            await asyncio.sleep(_POLL)
        return
    loop = asyncio.get_running_loop()
    exited: asyncio.Future[None] = loop.create_future()

    def readable() -> None:
        if not exited.done():
            exited.set_result(None)

    try:
        loop.add_reader(pidfd, readable)
        try:
            await exited
        finally:
            loop.remove_reader(pidfd)
    finally:
        os.close(pidfd)


def _has_exited(pid: int) -> bool:
    """Whether the process has exited, without waiting and without reaping it."""
    return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None


def _protocol(reader: asyncio.StreamReader) -> Callable[[], asyncio.StreamReaderProtocol]:
    return lambda: asyncio.StreamReaderProtocol(reader)
