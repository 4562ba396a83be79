"""Proxies side by side: ``start``/``stop``/``status``/``restart``/``logs``, each keyed by port.

Every instance runs detached in its own process group with ``proxy_<port>.pid``, ``.lock`` and
``.log`` in the runtime directory. Nothing is ever killed by name or pattern: ``stop`` signals
only the process group recorded for that port, after checking that the process is alive and is
the one that wrote the record.

A start, stop or restart of a port holds that port's ``.ctl`` lock while it works, so two of
them never interleave (a second ``start`` waits, then finds the first one's instance running),
and only one of them ever writes to the port's log. Stale files (a crashed instance's record
and lock) are removed under that lock too, by whichever of start, stop and status comes next.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from proxyfleet.fleet.locks import FileLock, LockBusy, remove_if_free
from proxyfleet.fleet.portguard import (
    PortState,
    answers_health,
    free_port,
    inspect,
    is_ready,
    port_owner,
)
from proxyfleet.fleet.records import (
    InstanceFiles,
    InstanceRecord,
    log_size,
    log_tail,
    read_record,
    spawn_logged,
)

__all__ = ["Fleet", "InstanceStatus"]

Say = Callable[[str], None]

#: how long a stop waits for a start or restart of the same port that is under way
_STOP_WAIT = 30.0


@dataclass(frozen=True, slots=True)
class InstanceStatus:
    port: int
    pid: int | None
    state: str  # running / stale
    uptime: float | None
    health: str
    config: str | None
    log: str


class Fleet:
    """Instances under one runtime directory (an absolute path: a relative one would mean
    another place to each process that reads it). ``say`` prints what happens."""

    def __init__(self, directory: Path, say: Say) -> None:
        if not directory.is_absolute():
            raise ValueError(f"the runtime directory must be absolute, got {directory}")
        self.directory = directory
        self.say = say

    def files(self, port: int) -> InstanceFiles:
        return InstanceFiles(self.directory, port)

    @contextlib.contextmanager
    def _control(self, port: int, wait: float, doing: str) -> Iterator[bool]:
        """Hold the port's control lock (False: another command on the port kept it)."""
        lock = FileLock(self.files(port).control)
        try:
            lock.acquire()
        except LockBusy:
            self.say(
                f"port {port}: another start, stop or restart of this port is under way; "
                f"waiting up to {wait:g}s"
            )
            try:
                lock.acquire(wait)
            except LockBusy:
                self.say(f"port {port}: it is still under way after {wait:g}s; not {doing}")
                yield False
                return
        try:
            yield True
        finally:
            lock.release()

    # -- start ----------------------------------------------------------------------------------
    def start(
        self, port: int, host: str, args: list[str], config: str | None, wait: float = 20.0
    ) -> int:
        if port == 0:  # any free port: picked here, so that every file is keyed by it
            picked = free_port(host)
            if picked is None:
                self.say(f"port 0: cannot bind {host} to pick a free port; not starting")
                return 1
            self.say(f"port 0: picked the free port {picked}")
            port = picked
        with self._control(port, wait, "starting") as held:
            return self._start(port, host, args, config, wait) if held else 1

    def _start(self, port: int, host: str, args: list[str], config: str | None, wait: float) -> int:
        files = self.files(port)
        record = read_record(files)
        if record is not None and record.alive_and_ours():
            if answers_health(host, port) is not None:
                self.say(f"port {port}: already running (pid {record.pid}); nothing to do")
                return 0
            self.say(
                f"port {port}: pid {record.pid} is ours but does not answer /health; "
                f"see {files.log} or 'proxyfleet stop --port {port}'"
            )
            return 1
        if not self._clean_stale(files, record):
            self.say(
                f"port {port}: another process holds {files.lock} (an instance that has not "
                "written its record yet?); not starting"
            )
            return 1
        state = inspect(host, port, record_alive_and_ours=False)
        if state is PortState.FOREIGN:
            owner = port_owner(port) or "another process"
            self.say(f"port {port}: in use by {owner}; not starting (nothing was touched)")
            return 1
        if state is PortState.UNKNOWN:
            self.say(
                f"port {port}: cannot tell whether {host}:{port} is free (binding it "
                "failed); not starting"
            )
            return 1
        return self._spawn(files, port, host, args, config, wait)

    def _spawn(
        self,
        files: InstanceFiles,
        port: int,
        host: str,
        args: list[str],
        config: str | None,
        wait: float,
    ) -> int:
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        command = [
            sys.executable,
            "-m",
            "proxyfleet",
            "serve",
            *args,
            "--host",
            host,
            "--port",
            str(port),
            "--instance-dir",
            str(self.directory),
        ]
        since = log_size(files.log)  # what this start writes begins here
        with files.log.open("ab") as log:
            log.write(f"--- proxyfleet start on port {port} at {time.ctime()}\n".encode())
        proc = spawn_logged(command, files.log)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                self._forget(files, proc.pid)
                self.say(
                    f"port {port}: the instance exited with code {proc.returncode}; its "
                    f"log ({files.log}) ends:\n{log_tail(files.log, since=since)}"
                )
                return 1
            record = read_record(files)
            if record is not None and record.pid == proc.pid and is_ready(host, port):
                self.say(f"port {port}: started (pid {proc.pid}), log {files.log}")
                return 0
            time.sleep(0.05)
        self.say(
            f"port {port}: not ready within {wait:g}s; stopping it. Its log ends:\n"
            f"{log_tail(files.log, since=since)}"
        )
        self._signal_group(proc.pid, signal.SIGKILL)
        proc.wait(5)
        self._forget(files, proc.pid)
        return 1

    @staticmethod
    def _forget(files: InstanceFiles, pid: int) -> None:
        """After the instance ``pid`` is gone: its record, and the lock it can no longer hold."""
        record = read_record(files)
        if record is not None and record.pid == pid:
            files.pid.unlink(missing_ok=True)
        remove_if_free(files.lock)

    def _clean_stale(self, files: InstanceFiles, record: InstanceRecord | None) -> bool:
        """Remove a record whose process is gone (or not ours) and a lock file nobody holds;
        with the port's control lock held. False when someone holds the instance lock."""
        if record is not None:
            self.say(
                f"port {files.port}: removing stale files of pid {record.pid} "
                "(the process is gone or is not ours)"
            )
        elif files.pid.exists():
            self.say(f"port {files.port}: removing an unreadable pid file")
        elif files.lock.exists() and remove_if_free(files.lock):
            self.say(f"port {files.port}: removing a stale lock file")
            return True
        files.pid.unlink(missing_ok=True)
        return remove_if_free(files.lock)

    # -- stop -------------------------------------------------------------------------------------
    def stop(self, port: int, timeout: float = 10.0) -> int:
        if not self.files(port).directory.is_dir():
            self.say(f"port {port}: no instance recorded; nothing to stop")
            return 0
        with self._control(port, _STOP_WAIT, "stopping") as held:
            return self._stop(port, timeout) if held else 1

    def _stop(self, port: int, timeout: float) -> int:
        files = self.files(port)
        record = read_record(files)
        if record is None or not record.alive_and_ours():
            if record is not None or files.pid.exists() or files.lock.exists():
                if not self._clean_stale(files, record):
                    self.say(
                        f"port {port}: another process holds {files.lock} but no instance "
                        "is recorded; nothing to stop"
                    )
            else:
                self.say(f"port {port}: no instance recorded; nothing to stop")
            return 0
        started = time.monotonic()
        self._signal_group(record.pid, signal.SIGTERM)
        while time.monotonic() - started < timeout:
            if not record.alive_and_ours():
                break
            time.sleep(0.05)
        else:
            self.say(f"port {port}: still running {timeout:g}s after SIGTERM; sending SIGKILL")
            self._signal_group(record.pid, signal.SIGKILL)
            while record.alive_and_ours() and time.monotonic() - started < timeout + 5:
                time.sleep(0.05)
        if record.alive_and_ours():
            self.say(f"port {port}: pid {record.pid} survived SIGKILL; its record is kept")
            return 1
        self._forget(files, record.pid)  # a clean exit removed both already; a SIGKILL did not
        self.say(f"port {port}: stopped (pid {record.pid}) in {time.monotonic() - started:.1f}s")
        return 0

    def stop_all(self, timeout: float = 10.0) -> int:
        ports = self.ports()
        if not ports:
            self.say("no instances recorded")
        return max((self.stop(port, timeout) for port in ports), default=0)

    @staticmethod
    def _signal_group(pid: int, sig: int) -> None:
        """The instance leads its own process group: the signal reaches its children too."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, sig)

    # -- status, restart, logs ------------------------------------------------------------------
    def ports(self) -> list[int]:
        """Every port with a record or a lock file here."""
        if not self.directory.is_dir():
            return []
        ports = set()
        for path in [*self.directory.glob("proxy_*.pid"), *self.directory.glob("proxy_*.lock")]:
            with contextlib.suppress(ValueError):
                ports.add(int(path.stem.split("_", 1)[1]))
        return sorted(ports)

    def status(self) -> list[InstanceStatus]:
        """Every recorded instance; the stale ones are cleaned as they are reported (unless a
        start, stop or restart of that port is under way: it sees to them)."""
        out = []
        for port in self.ports():
            files = self.files(port)
            record = read_record(files)
            if record is not None and record.alive_and_ours():
                health = answers_health(record.host, port)
                out.append(
                    InstanceStatus(
                        port,
                        record.pid,
                        "running",
                        time.time() - record.started_at,
                        str(health.get("status")) if health else "not answering",
                        record.config,
                        record.log,
                    )
                )
                continue
            if record is not None or files.pid.exists():
                out.append(
                    InstanceStatus(
                        port,
                        record.pid if record else None,
                        "stale",
                        None,
                        "-",
                        record.config if record else None,
                        str(files.log),
                    )
                )
            self._tidy(files)
        return out

    def _tidy(self, files: InstanceFiles) -> None:
        lock = FileLock(files.control)
        try:
            lock.acquire()
        except LockBusy:
            return  # a start, stop or restart of the port works on it
        try:
            record = read_record(files)  # again: it may have changed before we held the lock
            if record is None or not record.alive_and_ours():
                self._clean_stale(files, record)
        finally:
            lock.release()

    def restart(self, port: int, wait: float = 20.0) -> int:
        if read_record(self.files(port)) is None:
            self.say(f"port {port}: no instance recorded; use 'proxyfleet start'")
            return 1
        with self._control(port, wait, "restarting") as held:
            if not held:
                return 1
            record = read_record(self.files(port))
            if record is None:  # stopped meanwhile
                self.say(f"port {port}: no instance recorded; use 'proxyfleet start'")
                return 1
            self._stop(port, 10.0)
            with _cwd(record.cwd):
                return self._start(port, record.host, list(record.args), record.config, wait)

    def logs(self, port: int, follow: bool, lines: int, write: Callable[[str], None]) -> int:
        files = self.files(port)
        if not files.log.exists():
            self.say(f"port {port}: no log at {files.log}")
            return 1
        write(log_tail(files.log, lines) + "\n")
        if not follow:
            return 0
        with files.log.open(errors="replace") as handle:
            handle.seek(0, os.SEEK_END)
            while True:  # until the instance is gone or Ctrl+C
                chunk = handle.read()
                if chunk:
                    write(chunk)
                    continue
                record = read_record(files)
                if record is None or not record.alive_and_ours():
                    return 0
                time.sleep(0.2)


@contextlib.contextmanager
def _cwd(path: str) -> Iterator[None]:
    old = os.getcwd()
    if path and Path(path).is_dir():
        os.chdir(path)
    try:
        yield
    finally:
        os.chdir(old)
