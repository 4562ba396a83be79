"""The instance's own side of ``proxyfleet start``: hold the lock, write and remove the record.

The lock is held by the running process itself, so a crash frees it; the pid record is written
atomically once the port is bound. On a clean exit the instance removes its record (only if it
is still its own) and its lock file (while still holding it, see :mod:`.locks`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

from proxyfleet.errors import ListenError
from proxyfleet.fleet.locks import FileLock, LockBusy
from proxyfleet.fleet.records import InstanceFiles, new_record, read_record, write_record

__all__ = ["InstanceSpec", "hold_instance_lock", "instance_record"]

#: a cleaner takes a free lock for an instant before it removes the file: not a holder to refuse
_LOCK_WAIT = 0.5


@dataclass(frozen=True, slots=True)
class InstanceSpec:
    files: InstanceFiles
    config: str | None
    args: tuple[str, ...]


@contextlib.contextmanager
def hold_instance_lock(files: InstanceFiles) -> Iterator[None]:
    if files.port == 0:
        raise ListenError(
            "an instance keyed by its port needs the port it will serve on, not 0 "
            "('proxyfleet start --port 0' picks a free one)"
        )
    lock = FileLock(files.lock)
    try:
        lock.acquire(_LOCK_WAIT)
    except LockBusy as exc:
        raise ListenError(f"another proxyfleet instance holds {files.lock}; stop it first") from exc
    try:
        yield
    finally:
        lock.release()  # removes the file, then lets go


@contextlib.contextmanager
def instance_record(spec: InstanceSpec, host: str) -> Iterator[None]:
    record = new_record(spec.files.port, host, spec.config, spec.files.log, spec.args)
    write_record(spec.files, record)
    try:
        yield
    finally:
        current = read_record(spec.files)
        if current is not None and current.pid == record.pid:
            spec.files.pid.unlink(missing_ok=True)
