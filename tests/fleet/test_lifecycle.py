"""The instance's own side of ``proxyfleet start``: the lock (one holder; a second is refused
with a ListenError naming the lock file; a crash of the holder frees it) and the pid record
(written whole while the instance runs, removed on exit only when it is still its own)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from proxyfleet.errors import ListenError
from proxyfleet.fleet.lifecycle import InstanceSpec, hold_instance_lock, instance_record
from proxyfleet.fleet.locks import LockBusy
from proxyfleet.fleet.records import InstanceFiles, new_record, read_record, write_record
from tests.conftest import cli_env

_HOLDER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from proxyfleet.fleet.lifecycle import hold_instance_lock
    from proxyfleet.fleet.records import InstanceFiles

    with hold_instance_lock(InstanceFiles(Path(sys.argv[1]), int(sys.argv[2]))):
        print("holding", flush=True)
        time.sleep(60)
    """
)


@pytest.fixture
def holder(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], InstanceFiles]]:
    """Another process holding the lock of port 4100 (it must be killed to let go)."""
    files = InstanceFiles(tmp_path / "runtime", 4100)
    proc = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(files.directory), str(files.port)],
        stdout=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        env=cli_env(),
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "holding"
    yield proc, files
    if proc.poll() is None:
        proc.kill()
    proc.communicate(timeout=5)


def _refused(files: InstanceFiles) -> ListenError:
    with pytest.raises(ListenError) as caught, hold_instance_lock(files):
        raise AssertionError("got a lock someone else holds")
    return caught.value


def test_the_lock_creates_a_private_directory_and_lets_go_on_exit(tmp_path: Path) -> None:
    files = InstanceFiles(tmp_path / "new" / "runtime", 4000)
    with hold_instance_lock(files):
        assert files.lock.exists()
        assert (files.directory.stat().st_mode & 0o777) == 0o700
        _refused(files)  # even from this very process: a second holder is one too many
    assert not files.lock.exists()  # its holder removes it on the way out, still holding it
    with hold_instance_lock(files):  # released on exit: taken again at once
        pass


def test_an_instance_keyed_by_port_0_is_refused(tmp_path: Path) -> None:
    """Port 0 is not a key: 'start' picks the free port first and passes it."""
    files = InstanceFiles(tmp_path, 0)
    with (
        pytest.raises(ListenError, match="needs the port it will serve on, not 0"),
        hold_instance_lock(files),
    ):
        raise AssertionError("locked port 0")
    assert not tmp_path.joinpath("proxy_0.lock").exists()


def test_the_lock_is_released_when_the_block_raises(tmp_path: Path) -> None:
    files = InstanceFiles(tmp_path, 4000)
    with pytest.raises(RuntimeError), hold_instance_lock(files):
        raise RuntimeError("serving failed")
    with hold_instance_lock(files):
        pass


def test_locks_of_other_ports_are_independent(tmp_path: Path) -> None:
    with (
        hold_instance_lock(InstanceFiles(tmp_path, 4000)),
        hold_instance_lock(InstanceFiles(tmp_path, 4001)),
    ):
        _refused(InstanceFiles(tmp_path, 4000))


def test_a_second_holder_is_refused_naming_the_lock_file(
    holder: tuple[subprocess.Popen[str], InstanceFiles],
) -> None:
    proc, files = holder
    error = _refused(files)
    assert str(error) == f"another proxyfleet instance holds {files.lock}; stop it first"
    assert isinstance(error.__cause__, LockBusy)
    assert ListenError.exit_code == 1
    assert proc.poll() is None  # refusing touches nobody


def test_a_crash_of_the_holder_frees_the_lock(
    holder: tuple[subprocess.Popen[str], InstanceFiles],
) -> None:
    proc, files = holder
    _refused(files)
    os.kill(proc.pid, signal.SIGKILL)  # no cleanup code runs
    proc.wait(5)
    assert files.lock.exists()  # the file stays; the lock on it is gone with the process
    with hold_instance_lock(files):
        pass


def _spec(tmp_path: Path, port: int = 4200) -> InstanceSpec:
    files = InstanceFiles(tmp_path / "runtime", port)
    return InstanceSpec(files, str(tmp_path / "pf.yaml"), ("--selection", "round-robin"))


def test_the_record_exists_while_the_instance_runs(tmp_path: Path) -> None:
    spec = _spec(tmp_path)
    with instance_record(spec, "127.0.0.1"):
        record = read_record(spec.files)
        assert record is not None
        assert record.pid == os.getpid()
        assert (record.port, record.host) == (4200, "127.0.0.1")
        assert record.config == str(tmp_path / "pf.yaml")
        assert record.args == ("--selection", "round-robin")
        assert record.log == str(spec.files.log)
        assert record.alive_and_ours()
        assert sorted(spec.files.directory.iterdir()) == [spec.files.pid]  # no temp file
    assert not spec.files.pid.exists()


def test_the_record_is_removed_when_serving_fails(tmp_path: Path) -> None:
    spec = _spec(tmp_path)
    with pytest.raises(RuntimeError), instance_record(spec, "127.0.0.1"):
        raise RuntimeError("gateway crashed on start")
    assert not spec.files.pid.exists()


def test_a_record_that_is_no_longer_ours_is_left_alone(tmp_path: Path) -> None:
    spec = _spec(tmp_path)
    with instance_record(spec, "127.0.0.1"):
        mine = read_record(spec.files)
        assert mine is not None
        successor = replace(mine, pid=mine.pid + 1, start_ticks=1)  # another instance took over
        write_record(spec.files, successor)
    assert read_record(spec.files) == successor  # not removed: it is the successor's


def test_a_record_removed_meanwhile_is_no_error(tmp_path: Path) -> None:
    spec = _spec(tmp_path)
    with instance_record(spec, "127.0.0.1"):
        spec.files.pid.unlink()
    assert not spec.files.pid.exists()


def test_an_unreadable_record_at_exit_is_left_alone(tmp_path: Path) -> None:
    spec = _spec(tmp_path)
    with instance_record(spec, "127.0.0.1"):
        spec.files.pid.write_text("{torn")  # not ours to judge: we cannot tell whose it is
    assert spec.files.pid.read_text() == "{torn"


def test_the_record_replaces_a_stale_one(tmp_path: Path) -> None:
    spec = _spec(tmp_path)
    stale = replace(
        new_record(4200, "127.0.0.1", None, spec.files.log, ()), pid=2**22 + 5, start_ticks=7
    )
    write_record(spec.files, stale)
    with instance_record(spec, "::1"):
        record = read_record(spec.files)
        assert record is not None
        assert record.pid == os.getpid()
        assert record.host == "::1"
    assert not spec.files.pid.exists()
