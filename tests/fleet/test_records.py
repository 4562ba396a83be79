"""Instance records: the files of a port, records written atomically and read defensively, the
process start time of live, dead, zombie and oddly named processes (a reused PID is not
ours), the runtime directory's rules, and ``spawn_logged``'s detached, logged children."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest

from proxyfleet.fleet.records import (
    InstanceFiles,
    InstanceRecord,
    default_runtime_dir,
    log_size,
    log_tail,
    new_record,
    process_start_ticks,
    read_record,
    spawn_logged,
    write_record,
)


def _record(files: InstanceFiles, **changes: object) -> InstanceRecord:
    record = new_record(files.port, "127.0.0.1", "/etc/pf.yaml", files.log, ("--retries", "3"))
    return replace(record, **changes)  # type: ignore[arg-type]


def _state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


def _ticks_since_boot() -> float:
    return float(Path("/proc/uptime").read_text().split()[0]) * os.sysconf("SC_CLK_TCK")


def test_instance_files_are_keyed_by_port(tmp_path: Path) -> None:
    files = InstanceFiles(tmp_path, 10001)
    assert files.pid == tmp_path / "proxy_10001.pid"
    assert files.lock == tmp_path / "proxy_10001.lock"
    assert files.log == tmp_path / "proxy_10001.log"
    assert files.control == tmp_path / "proxy_10001.ctl"
    assert InstanceFiles(tmp_path, 10002).pid != files.pid  # another port, other files


def test_log_tail_shows_only_what_was_written_since_a_point(tmp_path: Path) -> None:
    log = tmp_path / "proxy_1.log"
    assert log_size(log) == 0
    assert log_tail(log) == "(no log)"
    log.write_text("an earlier run\n")
    since = log_size(log)
    with log.open("a") as handle:
        handle.write("".join(f"line {n}\n" for n in range(30)))
    assert log_tail(log, 2, since) == "line 28\nline 29"
    assert "an earlier run" not in log_tail(log, 100, since)
    assert log_tail(log, 100).startswith("an earlier run")
    assert log_tail(log, 5, log_size(log)) == ""  # nothing written since


def test_new_record_describes_the_calling_process(tmp_path: Path) -> None:
    files = InstanceFiles(tmp_path, 2048)
    before = time.time()
    record = new_record(2048, "::1", None, files.log, ("--debug",))
    assert record.pid == os.getpid()
    assert record.start_ticks == process_start_ticks(os.getpid())
    assert (record.port, record.host, record.config) == (2048, "::1", None)
    assert record.log == str(files.log)
    assert record.args == ("--debug",)
    assert record.cwd == os.getcwd()
    assert before <= record.started_at <= time.time()
    assert record.alive_and_ours()


def test_write_then_read_round_trips(tmp_path: Path) -> None:
    files = InstanceFiles(tmp_path / "runtime", 8080)
    record = _record(files)
    write_record(files, record)  # creates the directory
    assert (files.directory.stat().st_mode & 0o777) == 0o700
    back = read_record(files)
    assert back == record
    assert back is not None
    assert isinstance(back.args, tuple)  # JSON has lists; the record keeps a tuple
    assert json.loads(files.pid.read_text())["pid"] == os.getpid()
    assert sorted(files.directory.iterdir()) == [files.pid]  # no temp file left


def test_write_replaces_the_file_whole(tmp_path: Path) -> None:
    files = InstanceFiles(tmp_path, 8080)
    write_record(files, _record(files, args=("--x",) * 200))
    inode = files.pid.stat().st_ino
    write_record(files, _record(files, args=()))
    assert files.pid.stat().st_ino != inode  # a new file renamed over the old one
    back = read_record(files)
    assert back is not None
    assert back.args == ()


def test_a_reader_never_sees_a_torn_record(tmp_path: Path) -> None:
    files = InstanceFiles(tmp_path, 8080)
    big = _record(files, args=tuple(f"--flag-{n}" for n in range(2000)))
    small = _record(files, args=())
    write_record(files, big)
    seen: list[InstanceRecord | None] = []
    done = threading.Event()

    def read() -> None:
        while not done.is_set():
            seen.append(read_record(files))

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for n in range(100):
            write_record(files, big if n % 2 else small)
    finally:
        done.set()
        reader.join(10)
    assert seen
    assert all(record in (big, small) for record in seen)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "{torn",
        '{"pid": 1}',  # fields missing
        '{"pid": 1, "port": 1, "host": "h", "start_ticks": 1, "started_at": 0, '
        '"config": null, "log": "l", "colour": "blue"}',  # a field we do not know
        '{"pid": "one", "port": 1, "host": "h", "start_ticks": 1, "started_at": 0, '
        '"config": null, "log": "l", "args": 5}',  # args that are no list
    ],
)
def test_unreadable_or_foreign_files_read_as_none(tmp_path: Path, text: str) -> None:
    files = InstanceFiles(tmp_path, 9000)
    files.pid.write_text(text)
    assert read_record(files) is None


@pytest.mark.parametrize("text", ["12345\n", "[1, 2]", '"a string"', "null"])
def test_json_that_is_not_an_object_reads_as_none(tmp_path: Path, text: str) -> None:
    files = InstanceFiles(tmp_path, 9000)
    files.pid.write_text(text)
    assert read_record(files) is None


def test_no_file_and_non_utf8_read_as_none(tmp_path: Path) -> None:
    files = InstanceFiles(tmp_path, 9000)
    assert read_record(files) is None
    files.pid.write_bytes(b"\xff\xfe{}")
    assert read_record(files) is None


def test_start_ticks_of_a_live_child_then_a_zombie_then_nothing() -> None:
    low = _ticks_since_boot()
    child = subprocess.Popen(
        [sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE
    )
    try:
        ticks = process_start_ticks(child.pid)
        high = _ticks_since_boot()
        assert ticks is not None
        assert low - 2 <= ticks <= high + 2  # field 22: when it started, in ticks since boot
        assert process_start_ticks(child.pid) == ticks  # stable while it lives
        assert ticks >= (process_start_ticks(os.getpid()) or 0)  # started after us
        assert child.stdin is not None
        child.stdin.close()  # it exits, and stays a zombie until reaped
        deadline = time.monotonic() + 5
        while _state(child.pid) != "Z":
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert process_start_ticks(child.pid) is None  # a zombie is dead
    finally:
        child.wait(5)
    assert process_start_ticks(child.pid) is None or _state(child.pid) != "Z"  # reaped
    assert process_start_ticks(2**22 + 7) is None  # above pid_max: no such process


def test_start_ticks_survive_spaces_and_parentheses_in_the_name(tmp_path: Path) -> None:
    odd = tmp_path / "a) 1 2 (b"  # /proc/<pid>/stat shows the name as (a) 1 2 (b)
    sleep = shutil.which("sleep")
    assert sleep is not None
    odd.symlink_to(sleep)
    low = _ticks_since_boot()
    child = subprocess.Popen([str(odd), "30"])
    try:
        deadline = time.monotonic() + 5
        while "a) 1 2 (b" not in Path(f"/proc/{child.pid}/stat").read_text():
            assert time.monotonic() < deadline  # until exec has replaced the forked python
            time.sleep(0.01)
        ticks = process_start_ticks(child.pid)
        assert ticks is not None
        assert low - 2 <= ticks <= _ticks_since_boot() + 2
    finally:
        child.kill()
        child.wait(5)


def test_a_reused_pid_is_not_ours(tmp_path: Path) -> None:
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        files = InstanceFiles(tmp_path, 7000)
        ticks = process_start_ticks(sleeper.pid)
        assert ticks is not None
        ours = _record(files, pid=sleeper.pid, start_ticks=ticks)
        assert ours.alive_and_ours()
        # the same PID, started at another time: a process that reused the number
        assert not replace(ours, start_ticks=ticks - 1).alive_and_ours()
        assert not replace(ours, start_ticks=ticks + 1).alive_and_ours()
        write_record(files, replace(ours, start_ticks=ticks + 1))
        back = read_record(files)
        assert back is not None
        assert not back.alive_and_ours()
    finally:
        sleeper.kill()
        sleeper.wait(5)
    assert not ours.alive_and_ours()  # and once it is gone, not ours either


def test_runtime_dir_under_xdg_when_the_session_has_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    assert default_runtime_dir() == tmp_path / "proxyfleet"


@pytest.mark.parametrize("xdg", [None, "", "missing"])
def test_runtime_dir_falls_back_to_a_per_user_temp_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, xdg: str | None
) -> None:
    if xdg is None:
        monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    else:  # empty, or a directory that does not exist
        monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / xdg) if xdg else "")
    expected = Path(tempfile.gettempdir()) / f"proxyfleet-{os.getuid()}"
    assert default_runtime_dir() == expected


def test_spawn_logged_appends_output_detached_with_no_stdin(tmp_path: Path) -> None:
    log = tmp_path / "child.log"
    log.write_text("earlier run\n")
    work = tmp_path / "work"
    work.mkdir()
    script = (
        "import os, sys\n"
        "print('out', flush=True)\n"
        "print('err', file=sys.stderr, flush=True)\n"
        "print('stdin', repr(sys.stdin.read()), flush=True)\n"
        "print('cwd', os.getcwd(), flush=True)\n"
        "print('group', os.getpgid(0) == os.getpid(), os.getsid(0) == os.getpid(), flush=True)\n"
    )
    child = spawn_logged([sys.executable, "-c", script], log, cwd=work)
    assert child.wait(10) == 0
    lines = log.read_text().splitlines()
    assert lines[0] == "earlier run"  # appended, never truncated
    assert set(lines[1:]) == {"out", "err", "stdin ''", f"cwd {work}", "group True True"}
    assert os.getpgid(0) != child.pid  # we are not in its group: a stop of it spares us


def test_spawn_logged_gives_the_child_the_environment_it_is_given(tmp_path: Path) -> None:
    log = tmp_path / "env.log"
    script = "import os; print(sorted(k for k in os.environ if k.startswith('PF_TEST')))"
    env = {"PATH": os.environ.get("PATH", ""), "PF_TEST_ONE": "1"}
    child = spawn_logged([sys.executable, "-c", script], log, env=env)
    assert child.wait(10) == 0
    assert log.read_text().strip() == "['PF_TEST_ONE']"  # that one, and nothing of ours


def test_spawn_logged_group_reaches_grandchildren(tmp_path: Path) -> None:
    log = tmp_path / "group.log"
    child = spawn_logged(["sh", "-c", "sleep 30 & echo $!; wait"], log)
    try:
        deadline = time.monotonic() + 5
        while not log.read_text().strip():
            assert time.monotonic() < deadline
            time.sleep(0.01)
        grandchild = int(log.read_text().split()[0])
        assert os.getpgid(grandchild) == child.pid  # one group: one signal stops both
    finally:
        os.killpg(child.pid, 9)
        child.wait(5)
