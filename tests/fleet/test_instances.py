"""Proxies side by side with the real CLI: start, status, stop, restart, logs, stale files."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from proxyfleet.fleet.lifecycle import hold_instance_lock
from proxyfleet.fleet.records import InstanceFiles, read_record
from tests.conftest import Processes, cli_env, run_cli


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def runtime(tmp_path: Path) -> Iterator[dict[str, str]]:
    env = {"PROXYFLEET_RUNTIME_DIR": str(tmp_path / "runtime")}
    yield env
    run_cli("stop", "--all", env=env)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"


def test_two_instances_side_by_side_stop_alone(
    procs: Processes, runtime: dict[str, str], tmp_path: Path
) -> None:
    native = procs.mock("--name", "native")
    chat_only = procs.mock("--name", "chat", "--chat-only")
    config = tmp_path / "chat.yaml"
    config.write_text("pool:\n  provider: chat\n")
    one, two = _free_port(), _free_port()
    first = run_cli("start", "--port", str(one), "--upstream", native.url, env=runtime)
    assert first.returncode == 0, first.stdout + first.stderr
    assert f"port {one}: started" in first.stdout
    second = run_cli(
        "start",
        "--port",
        str(two),
        "--config",
        str(config),
        "--upstream",
        chat_only.url,
        env=runtime,
    )
    assert second.returncode == 0, second.stdout + second.stderr
    for port in (one, two):  # each reachable, each with its own provider mode
        with openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="x") as client:
            assert client.responses.create(model="m", input="hi").output_text
    status = json.loads(run_cli("status", "--json", env=runtime).stdout)
    assert [(s["port"], s["state"], s["health"]) for s in status] == [
        (p, "running", "ok") for p in sorted((one, two))
    ]
    pid_two = next(s["pid"] for s in status if s["port"] == two)
    again = run_cli("start", "--port", str(one), "--upstream", native.url, env=runtime)
    assert again.returncode == 0
    assert "already running" in again.stdout
    stopped = run_cli("stop", "--port", str(two), env=runtime)
    assert stopped.returncode == 0
    assert f"port {two}: stopped (pid {pid_two})" in stopped.stdout
    assert not _alive(pid_two)
    with openai.OpenAI(base_url=f"http://127.0.0.1:{one}/v1", api_key="x") as client:
        assert client.responses.create(model="m", input="hi").output_text  # one keeps serving
    files = InstanceFiles(Path(runtime["PROXYFLEET_RUNTIME_DIR"]), two)
    assert not files.pid.exists()
    assert not files.lock.exists()  # removed by the instance itself on its way out
    assert files.log.exists()


def test_foreign_process_on_the_port_is_refused_and_untouched(
    runtime: dict[str, str], tmp_path: Path
) -> None:
    port = _free_port()
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"import socket,time; s=socket.create_server(('127.0.0.1',{port}));"
            " print('ready', flush=True); time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "ready"
        result = run_cli(
            "start", "--port", str(port), "--upstream", "http://127.0.0.1:1/v1", env=runtime
        )
        assert result.returncode == 1
        assert "in use by python" in result.stdout
        assert f"(pid {holder.pid})" in result.stdout
        assert holder.poll() is None  # never touched
        stop = run_cli("stop", "--port", str(port), env=runtime)
        assert "nothing to stop" in stop.stdout
        assert holder.poll() is None
    finally:
        holder.kill()
        holder.communicate(timeout=5)


def test_killed_instance_leaves_stale_files_that_status_cleans(
    procs: Processes, runtime: dict[str, str]
) -> None:
    mock = procs.mock()
    port = _free_port()
    assert (
        run_cli("start", "--port", str(port), "--upstream", mock.url, env=runtime).returncode == 0
    )
    files = InstanceFiles(Path(runtime["PROXYFLEET_RUNTIME_DIR"]), port)
    record = read_record(files)
    assert record is not None
    os.kill(record.pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while record.alive_and_ours() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert files.pid.exists()  # a crash cannot clean up after itself
    assert files.lock.exists()
    status = run_cli("status", "--json", env=runtime)
    rows = json.loads(status.stdout)  # the notice goes to stderr: stdout stays one document
    assert [(r["port"], r["pid"], r["state"]) for r in rows] == [(port, record.pid, "stale")]
    assert status.stderr.strip() == (
        f"port {port}: removing stale files of pid {record.pid} "
        "(the process is gone or is not ours)"
    )
    assert not files.pid.exists()
    assert not files.lock.exists()
    assert files.log.exists()  # the log is kept: it says what happened
    again = run_cli("status", "--json", env=runtime)
    assert (json.loads(again.stdout), again.stderr) == ([], "")
    table = run_cli("status", env=runtime)
    assert (table.stdout.strip(), table.stderr) == ("no instances recorded", "")
    restarted = run_cli("start", "--port", str(port), "--upstream", mock.url, env=runtime)
    assert restarted.returncode == 0, restarted.stdout
    assert "removing" not in restarted.stdout  # nothing was left to clean
    new = read_record(files)
    assert new is not None
    assert new.pid != record.pid


def test_a_reused_pid_is_never_signalled(runtime: dict[str, str]) -> None:
    port = _free_port()
    sleeper = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True
    )
    try:
        files = InstanceFiles(Path(runtime["PROXYFLEET_RUNTIME_DIR"]), port)
        files.directory.mkdir(parents=True)
        files.pid.write_text(
            json.dumps(
                {  # a record whose pid now belongs to someone else
                    "pid": sleeper.pid,
                    "port": port,
                    "host": "127.0.0.1",
                    "start_ticks": 1,
                    "started_at": 0,
                    "config": None,
                    "log": str(files.log),
                }
            )
        )
        result = run_cli("stop", "--port", str(port), env=runtime)
        assert result.returncode == 0
        assert "removing stale files" in result.stdout
        assert sleeper.poll() is None
        assert not files.pid.exists()
    finally:
        sleeper.kill()
        sleeper.wait(5)


def test_restart_logs_and_failed_start(procs: Processes, runtime: dict[str, str]) -> None:
    mock = procs.mock()
    port = _free_port()
    assert (
        run_cli(
            "start",
            "--port",
            str(port),
            "--upstream",
            mock.url,
            "--selection",
            "round-robin",
            env=runtime,
        ).returncode
        == 0
    )
    files = InstanceFiles(Path(runtime["PROXYFLEET_RUNTIME_DIR"]), port)
    before = read_record(files)
    restarted = run_cli("restart", "--port", str(port), env=runtime)
    assert restarted.returncode == 0, restarted.stdout
    after = read_record(files)
    assert before is not None
    assert after is not None
    assert after.pid != before.pid
    assert after.args == before.args  # the same flags
    assert "--selection" in after.args
    logs = run_cli("logs", "--port", str(port), "-n", "200", env=runtime)
    assert logs.stdout.count("gateway_started") == 2
    # follow ends by itself when the instance stops
    follower = subprocess.Popen(
        [sys.executable, "-m", "proxyfleet", "logs", "--port", str(port), "-f"],
        env={**os.environ, **runtime},
        stdout=subprocess.PIPE,
        text=True,
    )
    time.sleep(0.5)
    run_cli("stop", "--port", str(port), env=runtime)
    out, _ = follower.communicate(timeout=10)
    assert "gateway_stopped" in out
    bad = run_cli(
        "start",
        "--port",
        str(port),
        "--upstream",
        mock.url,
        "--auth-keys-file",
        "/nonexistent/keys",
        env=runtime,
    )
    assert bad.returncode == 2  # refused before anything started
    assert "auth_keys_file" in bad.stderr


def test_start_that_never_gets_ready_is_rolled_back(
    procs: Processes, runtime: dict[str, str]
) -> None:
    mock = procs.mock()
    port = _free_port()
    files = InstanceFiles(Path(runtime["PROXYFLEET_RUNTIME_DIR"]), port)
    files.directory.mkdir(parents=True)
    files.log.write_text("an earlier run's line\n")
    result = run_cli(
        "start", "--port", str(port), "--upstream", mock.url, "--wait", "0.01", env=runtime
    )
    assert result.returncode == 1
    assert f"port {port}: not ready within 0.01s; stopping it. Its log ends:" in result.stdout
    assert "proxyfleet start on port" in result.stdout  # the tail of the instance's log
    assert "an earlier run's line" not in result.stdout  # only what this start wrote
    time.sleep(0.5)
    status = run_cli("status", "--json", env=runtime)
    assert json.loads(status.stdout) == []  # nothing left behind, not even a stale record
    assert status.stderr == ""
    assert sorted(p.name for p in files.directory.iterdir()) == [files.log.name]


def test_start_on_port_0_picks_a_free_port_and_keys_everything_by_it(
    procs: Processes, runtime: dict[str, str]
) -> None:
    mock = procs.mock()
    directory = Path(runtime["PROXYFLEET_RUNTIME_DIR"])
    result = run_cli(
        "start", "--port", "0", "--upstream", mock.url, "--wait", "10", env=runtime, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
    first, started = result.stdout.strip().splitlines()
    port = int(first.removeprefix("port 0: picked the free port "))
    assert started.startswith(f"port {port}: started (pid ")
    assert not list(directory.glob("proxy_0.*"))
    files = InstanceFiles(directory, port)
    record = read_record(files)
    assert record is not None
    assert record.port == port
    with openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="x") as client:
        assert client.responses.create(model="m", input="hi").output_text
    status = json.loads(run_cli("status", "--json", env=runtime).stdout)
    assert [(s["port"], s["pid"], s["state"], s["health"]) for s in status] == [
        (port, record.pid, "running", "ok")
    ]
    restarted = run_cli("restart", "--port", str(port), env=runtime)
    assert restarted.returncode == 0, restarted.stdout
    assert f"port {port}: started" in restarted.stdout  # the same port again
    stopped = run_cli("stop", "--port", str(port), env=runtime)
    assert f"port {port}: stopped" in stopped.stdout
    assert sorted(p.name for p in directory.iterdir()) == [files.log.name]


def test_racing_starts_on_one_port_make_one_instance_and_one_log(
    procs: Processes, runtime: dict[str, str]
) -> None:
    mock = procs.mock()
    port = _free_port()
    command = [sys.executable, "-m", "proxyfleet", "start", "--port", str(port)]
    racers = [
        subprocess.Popen(
            [*command, "--upstream", mock.url],
            env=cli_env(runtime),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
        )
        for _ in range(3)
    ]
    outcomes = [(racer.wait(60), *racer.communicate(timeout=10)) for racer in racers]
    assert [code for code, _, _ in outcomes] == [0, 0, 0], outcomes
    said = sorted(out.strip().splitlines()[-1].split(" (pid")[0] for _, out, _ in outcomes)
    assert said == [f"port {port}: already running"] * 2 + [f"port {port}: started"], outcomes
    log = InstanceFiles(Path(runtime["PROXYFLEET_RUNTIME_DIR"]), port).log.read_text()
    assert log.count("--- proxyfleet start on port") == 1  # only the winner wrote to it
    assert log.count("gateway_started") == 1
    assert "holds" not in log


def test_a_start_refused_by_a_held_lock_never_touches_that_log(
    procs: Processes, runtime: dict[str, str]
) -> None:
    """Whoever holds the port's instance lock owns its log: a start that cannot have the
    lock writes nothing there and shows nothing of it."""
    mock = procs.mock()
    port = _free_port()
    files = InstanceFiles(Path(runtime["PROXYFLEET_RUNTIME_DIR"]), port)
    with hold_instance_lock(files):
        files.log.write_text("the holder's own line\n")
        result = run_cli("start", "--port", str(port), "--upstream", mock.url, env=runtime)
        assert result.returncode == 1
        assert result.stdout.strip() == (
            f"port {port}: another process holds {files.lock} (an instance that has not "
            "written its record yet?); not starting"
        )
        assert "the holder's own line" not in result.stdout + result.stderr
        assert files.log.read_text() == "the holder's own line\n"
        assert files.lock.exists()
    assert not files.pid.exists()


def test_restart_from_another_directory_with_a_relative_runtime_dir(
    procs: Processes, tmp_path: Path
) -> None:
    """A relative --runtime-dir is read once, against the directory the command runs in."""
    mock = procs.mock()
    port = _free_port()
    sub = tmp_path / "sub"
    sub.mkdir()
    try:
        started = run_cli(
            "start",
            "--port",
            str(port),
            "--upstream",
            mock.url,
            "--runtime-dir",
            "rt",
            cwd=tmp_path,
        )
        assert started.returncode == 0, started.stdout + started.stderr
        files = InstanceFiles(tmp_path / "rt", port)
        assert started.stdout.strip().endswith(f"log {files.log}")  # shown absolute
        restarted = run_cli("restart", "--port", str(port), "--runtime-dir", "../rt", cwd=sub)
        assert restarted.returncode == 0, restarted.stdout
        status = json.loads(run_cli("status", "--json", "--runtime-dir", "../rt", cwd=sub).stdout)
        assert [(s["port"], s["state"], s["log"]) for s in status] == [
            (port, "running", str(files.log))
        ]
        assert not (tmp_path.parent / "rt").exists()  # nothing went beside tmp_path
    finally:
        run_cli("stop", "--all", "--runtime-dir", str(tmp_path / "rt"))
