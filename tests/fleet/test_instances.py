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

from proxyfleet.fleet.records import InstanceFiles, read_record
from tests.conftest import Processes, run_cli


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


def test_killed_instance_leaves_stale_files_that_start_cleans(
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
    status = json.loads(run_cli("status", "--json", env=runtime).stdout)
    assert status[0]["state"] == "stale"
    again = run_cli("start", "--port", str(port), "--upstream", mock.url, env=runtime)
    assert again.returncode == 0, again.stdout
    assert f"removing stale files of pid {record.pid}" in again.stdout
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
    result = run_cli(
        "start", "--port", str(port), "--upstream", mock.url, "--wait", "0.01", env=runtime
    )
    assert result.returncode == 1
    assert f"port {port}: not ready within 0.01s; stopping it. Its log ends:" in result.stdout
    assert "proxyfleet start on port" in result.stdout  # the tail of the instance's log
    time.sleep(0.5)
    status = json.loads(run_cli("status", "--json", env=runtime).stdout)
    assert all(s["state"] != "running" for s in status)
