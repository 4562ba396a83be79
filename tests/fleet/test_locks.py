"""Lock files that can be removed safely: one holder at a time (another open of the same file,
even in this process, is refused or waits), removed by the holder as it lets go, removed by a
cleaner only when nobody holds them, and never two holders even while files come and go."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from proxyfleet.fleet.locks import FileLock, LockBusy, LockState, remove_if_free
from tests.conftest import cli_env


def test_one_holder_then_the_file_goes_with_the_release(tmp_path: Path) -> None:
    path = tmp_path / "new" / "x.lock"
    lock = FileLock(path)
    assert lock.state is LockState.NEW
    lock.acquire()
    assert lock.state is LockState.HELD
    assert path.exists()
    with pytest.raises(LockBusy, match=f"{path} is held"):
        FileLock(path).acquire()
    lock.release()
    assert lock.state is LockState.RELEASED
    assert not path.exists()
    lock.release()  # idempotent
    with pytest.raises(RuntimeError, match="released"):
        lock.acquire()  # a lock is used once
    with FileLock(path):  # free again at once
        assert path.exists()
    assert not path.exists()


def test_a_release_when_the_block_raises(tmp_path: Path) -> None:
    path = tmp_path / "x.lock"
    with pytest.raises(ValueError, match="boom"), FileLock(path):
        raise ValueError("boom")
    assert not path.exists()
    with FileLock(path):
        pass


def test_acquire_waits_for_the_holder_within_its_bound(tmp_path: Path) -> None:
    path = tmp_path / "x.lock"
    holder = FileLock(path)
    holder.acquire()
    started = time.monotonic()
    with pytest.raises(LockBusy):
        FileLock(path).acquire(wait=0.2)
    assert 0.2 <= time.monotonic() - started < 2
    timer = threading.Timer(0.2, holder.release)
    timer.start()
    try:
        waiter = FileLock(path)
        waiter.acquire(wait=5)  # had once the holder let go, on a file of its own
        assert path.exists()
        waiter.release()
    finally:
        timer.join()


def test_remove_if_free(tmp_path: Path) -> None:
    path = tmp_path / "x.lock"
    assert remove_if_free(path)  # nothing there: nothing to do
    path.write_text("")
    assert remove_if_free(path)
    assert not path.exists()
    with FileLock(path):
        assert not remove_if_free(path)
        assert path.exists()


def test_a_crashed_holder_leaves_a_file_anyone_may_remove(tmp_path: Path) -> None:
    path = tmp_path / "x.lock"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(
                """
                import sys, time
                from pathlib import Path
                from proxyfleet.fleet.locks import FileLock
                FileLock(Path(sys.argv[1])).acquire()
                print("holding", flush=True)
                time.sleep(60)
                """
            ),
            str(path),
        ],
        stdout=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        env=cli_env(),
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "holding"
        assert not remove_if_free(path)
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait(5)
        assert path.exists()  # no code ran: the file stays, the lock on it is gone
        assert remove_if_free(path)
        assert not path.exists()
    finally:
        if holder.poll() is None:
            holder.kill()
        holder.communicate(timeout=5)


def test_never_two_holders_while_cleaners_remove_files(tmp_path: Path) -> None:
    path = tmp_path / "x.lock"
    holders: list[int] = []
    overlaps: list[int] = []
    guard = threading.Lock()

    def take(me: int) -> None:
        for _ in range(200):  # bounded
            lock = FileLock(path)
            try:
                lock.acquire()
            except LockBusy:
                continue
            with guard:
                holders.append(me)
                if len(holders) > 1:
                    overlaps.append(len(holders))
            time.sleep(0.0005)
            with guard:
                holders.remove(me)
            lock.release()

    def clean() -> None:
        for _ in range(400):
            remove_if_free(path)

    threads = [threading.Thread(target=take, args=(n,)) for n in range(4)]
    threads += [threading.Thread(target=clean) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not any(thread.is_alive() for thread in threads)
    assert overlaps == []
