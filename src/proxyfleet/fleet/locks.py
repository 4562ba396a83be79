"""Lock files that can be removed safely.

A lock is an ``flock`` on a file. Removing a lock file is safe only for whoever holds the lock,
so the rule is: the holder removes the file as it lets go (still holding it), and a cleaner
removes a file only after taking the lock itself. A taker that locked a file someone removed
meanwhile finds the path gone or naming another file, and takes the lock again on the file
that is there now. So at most one process holds the lock on the file a path names, and no lock
file outlives its holder, except after a crash, when the next cleaner removes it.
"""

from __future__ import annotations

import enum
import fcntl
import os
import time
from pathlib import Path
from types import TracebackType

__all__ = ["FileLock", "LockBusy", "LockState", "remove_if_free"]

_POLL = 0.02  # seconds between two tries while waiting for a holder
_RETRIES = 100  # a path replaced under us this many times in a row is someone's bug


class LockBusy(Exception):
    """Someone else holds the lock (for longer than we were willing to wait)."""


class LockState(enum.Enum):
    NEW = "new"
    HELD = "held"
    RELEASED = "released"


def _open(path: Path, create: bool) -> int | None:
    flags = os.O_RDWR | os.O_CLOEXEC | (os.O_CREAT if create else 0)
    try:
        return os.open(path, flags, 0o600)
    except FileNotFoundError:
        return None


def _names(fd: int, path: Path) -> bool:
    """Does ``path`` still name the file open as ``fd``?"""
    try:
        now = os.stat(path)
    except FileNotFoundError:
        return False
    mine = os.fstat(fd)
    return (now.st_dev, now.st_ino) == (mine.st_dev, mine.st_ino)


def _lock(path: Path, create: bool) -> int | None:
    """The fd of ``path``, locked, or None when there is no file (and ``create`` is false).
    BlockingIOError when someone holds it."""
    for _ in range(_RETRIES):
        fd = _open(path, create)
        if fd is None:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BaseException:
            os.close(fd)
            raise
        if _names(fd, path):
            return fd
        os.close(fd)  # removed by its holder or a cleaner while we took it: take the new one
    raise RuntimeError(f"{path} keeps being replaced while it is locked")


class FileLock:
    """One hold of the lock on ``path``: acquired once, released once (idempotent); the file
    is created for the hold and removed by the release."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.state = LockState.NEW
        self._fd: int | None = None

    def acquire(self, wait: float = 0.0) -> None:
        """Take the lock, waiting up to ``wait`` seconds for a holder to let go; LockBusy
        after that."""
        if self.state is not LockState.NEW:
            raise RuntimeError(f"lock on {self.path} is {self.state.value}: a lock is used once")
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        deadline = time.monotonic() + wait
        while True:
            try:
                self._fd = _lock(self.path, create=True)
            except BlockingIOError as exc:
                if time.monotonic() >= deadline:
                    raise LockBusy(f"{self.path} is held by another process") from exc
                time.sleep(min(_POLL, max(0.0, deadline - time.monotonic())))
                continue
            self.state = LockState.HELD
            return

    def release(self) -> None:
        if self.state is not LockState.HELD or self._fd is None:
            self.state = LockState.RELEASED
            return
        try:
            if _names(self._fd, self.path):
                self.path.unlink(missing_ok=True)  # while still holding it: nobody else can
        finally:
            os.close(self._fd)  # also lets go of the lock
            self._fd = None
            self.state = LockState.RELEASED

    def __enter__(self) -> FileLock:
        self.acquire()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.release()


def remove_if_free(path: Path) -> bool:
    """Remove the lock file ``path`` unless someone holds it: True when it is gone (or was
    not there), False when it is held."""
    try:
        fd = _lock(path, create=False)
    except BlockingIOError:
        return False
    if fd is None:
        return True
    try:
        path.unlink(missing_ok=True)
    finally:
        os.close(fd)
    return True
