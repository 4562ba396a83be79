"""Proxies side by side: ``start``/``stop``/``status``/``restart``/``logs``, each keyed by port.

Every instance runs detached in its own process group with ``proxy_<port>.pid``, ``.lock`` and
``.log`` in the runtime directory. Nothing is ever killed by name or pattern: ``stop`` signals
only the process group recorded for that port, after checking that the process is alive and is
the one that wrote the record.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from proxyfleet.fleet.portguard import (
    PortState,
    answers_health,
    inspect,
    is_ready,
    port_owner,
)
from proxyfleet.fleet.records import InstanceFiles, InstanceRecord, read_record, spawn_logged

__all__ = ["Fleet", "InstanceStatus"]

Say = Callable[[str], None]


@dataclass(frozen=True, slots=True)
class InstanceStatus:
    port: int
    pid: int | None
    state: str  # running / stale
    uptime: float | None
    health: str
    config: str | None
    log: str


def _tail(path: Path, lines: int = 20) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


class Fleet:
    """Instances under one runtime directory. ``say`` prints what happens."""

    def __init__(self, directory: Path, say: Say) -> None:
        self.directory = directory
        self.say = say

    def files(self, port: int) -> InstanceFiles:
        return InstanceFiles(self.directory, port)

    # -- start ----------------------------------------------------------------------------------
    def start(
        self, port: int, host: str, args: list[str], config: str | None, wait: float = 20.0
    ) -> int:
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
        self._clean_stale(files, record)
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
        with files.log.open("ab") as log:
            log.write(f"--- proxyfleet start on port {port} at {time.ctime()}\n".encode())
        proc = spawn_logged(command, files.log)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                self.say(
                    f"port {port}: the instance exited with code {proc.returncode}; its "
                    f"log ({files.log}) ends:\n{_tail(files.log)}"
                )
                return 1
            record = read_record(files)
            if record is not None and record.pid == proc.pid and is_ready(host, port):
                self.say(f"port {port}: started (pid {proc.pid}), log {files.log}")
                return 0
            time.sleep(0.05)
        self.say(
            f"port {port}: not ready within {wait:g}s; stopping it. Its log ends:\n"
            f"{_tail(files.log)}"
        )
        self._signal_group(proc.pid, signal.SIGKILL)
        proc.wait(5)
        return 1

    def _clean_stale(self, files: InstanceFiles, record: InstanceRecord | None) -> None:
        if record is not None:
            self.say(
                f"port {files.port}: removing stale files of pid {record.pid} "
                "(the process is gone or is not ours)"
            )
        elif files.pid.exists():
            self.say(f"port {files.port}: removing an unreadable pid file")
        files.pid.unlink(missing_ok=True)
        if not _locked(files.lock):
            files.lock.unlink(missing_ok=True)

    # -- stop -------------------------------------------------------------------------------------
    def stop(self, port: int, timeout: float = 10.0) -> int:
        files = self.files(port)
        record = read_record(files)
        if record is None or not record.alive_and_ours():
            if record is not None or files.pid.exists():
                self._clean_stale(files, record)
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
        files.pid.unlink(missing_ok=True)
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
        if not self.directory.is_dir():
            return []
        ports = []
        for path in self.directory.glob("proxy_*.pid"):
            with contextlib.suppress(ValueError):
                ports.append(int(path.stem.split("_", 1)[1]))
        return sorted(ports)

    def status(self) -> list[InstanceStatus]:
        out = []
        for port in self.ports():
            files = self.files(port)
            record = read_record(files)
            if record is None or not record.alive_and_ours():
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
                continue
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
        return out

    def restart(self, port: int, wait: float = 20.0) -> int:
        record = read_record(self.files(port))
        if record is None:
            self.say(f"port {port}: no instance recorded; use 'proxyfleet start'")
            return 1
        self.stop(port)
        with _cwd(record.cwd):
            return self.start(port, record.host, list(record.args), record.config, wait)

    def logs(self, port: int, follow: bool, lines: int, write: Callable[[str], None]) -> int:
        files = self.files(port)
        if not files.log.exists():
            self.say(f"port {port}: no log at {files.log}")
            return 1
        write(_tail(files.log, lines) + "\n")
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


def _locked(path: Path) -> bool:
    try:
        with path.open("a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            fcntl.flock(handle, fcntl.LOCK_UN)
    except BlockingIOError:
        return True
    except OSError:
        return False
    return False


@contextlib.contextmanager
def _cwd(path: str) -> Iterator[None]:
    old = os.getcwd()
    if path and Path(path).is_dir():
        os.chdir(path)
    try:
        yield
    finally:
        os.chdir(old)
