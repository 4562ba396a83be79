"""The instance's own side of ``proxyfleet start``: hold the lock, write and remove the record.

The lock is held by the running process itself, so a crash frees it; the pid record is written
atomically once the port is bound, and removed on a clean exit (only if it is still ours).
"""

from __future__ import annotations

import contextlib
import fcntl
from collections.abc import Iterator
from dataclasses import dataclass

from proxyfleet.errors import ListenError
from proxyfleet.fleet.records import InstanceFiles, new_record, read_record, write_record

__all__ = ["InstanceSpec", "hold_instance_lock", "instance_record"]


@dataclass(frozen=True, slots=True)
class InstanceSpec:
    files: InstanceFiles
    config: str | None
    args: tuple[str, ...]


@contextlib.contextmanager
def hold_instance_lock(files: InstanceFiles) -> Iterator[None]:
    files.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    handle = files.lock.open("a")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError as exc:
        handle.close()
        raise ListenError(f"another proxyfleet instance holds {files.lock}; stop it first") from exc
    try:
        yield
    finally:
        handle.close()  # also releases the lock


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
