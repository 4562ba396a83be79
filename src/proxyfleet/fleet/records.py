"""Instance records: ``proxy_<port>.pid`` (JSON, written atomically), ``.lock``, ``.log``, and
``.ctl``, held by the ``start``/``stop``/``restart`` working on that port while it runs.

A record is trusted only when its process is alive *and* is the one that wrote it: the process
start time (``/proc/<pid>/stat`` field 22) must match, so a reused PID is never taken for ours.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

__all__ = [
    "InstanceFiles",
    "InstanceRecord",
    "default_runtime_dir",
    "log_size",
    "log_tail",
    "process_start_ticks",
    "read_record",
    "spawn_logged",
    "write_record",
]


def spawn_logged(
    command: list[str],
    log: Path,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
) -> subprocess.Popen[bytes]:
    """Start ``command`` detached in a process group of its own, output appended to ``log``
    (``env``: its whole environment; default: this process's).

    The group lets a stop reach the process and every child it starts."""
    with log.open("ab") as handle:
        return subprocess.Popen(
            command,
            stdout=handle,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            cwd=cwd,
            env=env,
        )


def log_size(path: Path) -> int:
    """Where the next line appended to ``path`` will start (0 when there is no file)."""
    try:
        return path.stat().st_size
    except OSError:
        return 0


def log_tail(path: Path, lines: int = 20, since: int = 0) -> str:
    """The last ``lines`` lines of ``path`` written from offset ``since`` on: what one run
    wrote, never an earlier run's lines."""
    try:
        with path.open("rb") as handle:
            handle.seek(since)
            text = handle.read().decode(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


def default_runtime_dir() -> Path:
    """``$XDG_RUNTIME_DIR/proxyfleet`` when the session has one, else a per-user temp folder."""
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg and Path(xdg).is_dir():
        return Path(xdg) / "proxyfleet"
    return Path(tempfile.gettempdir()) / f"proxyfleet-{os.getuid()}"


@dataclass(frozen=True, slots=True)
class InstanceFiles:
    directory: Path
    port: int

    @property
    def pid(self) -> Path:
        return self.directory / f"proxy_{self.port}.pid"

    @property
    def lock(self) -> Path:
        return self.directory / f"proxy_{self.port}.lock"

    @property
    def log(self) -> Path:
        return self.directory / f"proxy_{self.port}.log"

    @property
    def control(self) -> Path:
        """Held by the start, stop or restart of this port while it works (see fleet.locks)."""
        return self.directory / f"proxy_{self.port}.ctl"


@dataclass(frozen=True, slots=True)
class InstanceRecord:
    pid: int
    port: int
    host: str
    start_ticks: int  # the process start time, to tell a reused PID from ours
    started_at: float  # unix time
    config: str | None
    log: str
    args: tuple[str, ...] = ()  # the serve flags it was started with, for restart
    cwd: str = ""

    def alive_and_ours(self) -> bool:
        ticks = process_start_ticks(self.pid)
        return ticks is not None and ticks == self.start_ticks


def process_start_ticks(pid: int) -> int | None:
    """When the process started (clock ticks since boot), or None if there is no such process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # the command name may hold spaces and parentheses: fields start after the last ")"
    fields = stat[stat.rindex(")") + 2 :].split()
    if fields[0] == "Z":  # a zombie is dead, whatever its PID says
        return None
    return int(fields[19])


def write_record(files: InstanceFiles, record: InstanceRecord) -> None:
    """Atomically: a temp file in the same directory, fsync, then rename over the old one."""
    files.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, temp = tempfile.mkstemp(prefix=files.pid.name, dir=files.directory)
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(asdict(record), handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, files.pid)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def read_record(files: InstanceFiles) -> InstanceRecord | None:
    """The record, or None when there is none or it cannot be read (a torn or foreign file)."""
    try:
        data = json.loads(files.pid.read_text())
        if not isinstance(data, dict):
            return None  # valid JSON, but not a record of ours
        data["args"] = tuple(data.get("args", ()))
        return InstanceRecord(**data)
    except (OSError, ValueError, TypeError):
        return None


def new_record(
    port: int, host: str, config: str | None, log: Path, args: tuple[str, ...]
) -> InstanceRecord:
    """The record of the calling process, serving ``host:port``."""
    pid = os.getpid()
    ticks = process_start_ticks(pid)
    assert ticks is not None
    return InstanceRecord(pid, port, host, ticks, time.time(), config, str(log), args, os.getcwd())
