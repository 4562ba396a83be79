"""The fleet commands through the real CLI, the quick cases: argument errors, bad configs and
deployments (exit 2), unknown ports, stale and unreadable records, the runtime directory's
precedence, ``ps``/``down`` of what is not up, and ``nginx render``. Nothing here waits for a
gateway to start: the end-to-end runs are in tests/fleet/test_instances.py and test_manager.py.

Records and deployment states that must look alive are written for the test process itself
(alive, and the very process that wrote them), so no command here is ever asked to stop one.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from proxyfleet.fleet.deploy import load_deployment
from proxyfleet.fleet.lifecycle import hold_instance_lock
from proxyfleet.fleet.manager import Manager, Process
from proxyfleet.fleet.nginx import render_nginx
from proxyfleet.fleet.records import InstanceFiles, new_record, process_start_ticks, write_record
from tests import redisd
from tests.conftest import run_cli

UP = "http://127.0.0.1:9/v1"
DEAD_PID = 2**22 + 11  # above pid_max: never a live process


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def runtime(tmp_path: Path) -> Path:
    return tmp_path / "runtime"


@pytest.fixture
def env(runtime: Path) -> dict[str, str]:
    return {"PROXYFLEET_RUNTIME_DIR": str(runtime)}


def _cli(
    *args: str, env: dict[str, str], cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    result = run_cli(*args, env=env, cwd=cwd)
    assert "Traceback" not in result.stderr, result.stderr
    return result


def _usage_error(*args: str, needle: str) -> None:
    result = run_cli(*args)
    assert result.returncode == 2
    assert result.stderr.startswith("usage: proxyfleet")
    assert needle in result.stderr
    assert result.stdout == ""


# -- argument errors ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["stop"], "one of the arguments --port --all is required"),
        (["stop", "--port", "1", "--all"], "argument --all: not allowed with argument --port"),
        (["stop", "--port", "x"], "argument --port: invalid int value: 'x'"),
        (["stop", "--all", "--timeout", "soon"], "argument --timeout: invalid float value"),
        (["restart"], "the following arguments are required: --port"),
        (["logs"], "the following arguments are required: --port"),
        (["logs", "--port", "1", "-n", "all"], "argument -n/--lines: invalid int value: 'all'"),
        (["status", "--port", "1"], "unrecognized arguments: --port 1"),
        (["start", "--wait", "long"], "argument --wait: invalid float value: 'long'"),
        (["start", "--selection", "fastest"], "argument --selection: invalid choice"),
        (["up"], "the following arguments are required: -f/--file"),
        (["ps"], "the following arguments are required: -f/--file"),
        (["down"], "the following arguments are required: -f/--file"),
        (["down", "-f", "d.yaml", "--timeout", "x"], "argument --timeout: invalid float value"),
        (["up", "-f", "d.yaml", "--wait", "x"], "argument --wait: invalid float value"),
        (["nginx"], "the following arguments are required: ACTION"),
        (["nginx", "reload"], "invalid choice: 'reload'"),
        (["nginx", "render"], "the following arguments are required: -f/--file"),
    ],
)
def test_bad_arguments_exit_2_with_usage(args: list[str], needle: str) -> None:
    _usage_error(*args, needle=needle)


# -- start: refused before anything starts ----------------------------------------------------


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--port", "1"], "proxyfleet: config error: pool: no backends"),
        (["--port", "70000", "--upstream", UP], "flag --port: server.port"),
        (["--upstream", "ftp://x"], "flag --upstream: pool.upstreams[0]"),
        (["--upstream", UP, "--auth-keys-file", "nokeys"], "server.auth_keys_file: nokeys"),
        (["--config", "missing.yaml", "--upstream", UP], "missing.yaml: cannot read file"),
    ],
)
def test_start_with_a_bad_config_exits_2_and_starts_nothing(
    tmp_path: Path, runtime: Path, env: dict[str, str], args: list[str], needle: str
) -> None:
    result = _cli("start", *args, env=env, cwd=tmp_path)
    assert result.returncode == 2, result.stdout
    assert needle in result.stderr
    assert not runtime.exists()  # not even the runtime directory


def test_start_on_an_address_it_cannot_check_is_refused(runtime: Path, env: dict[str, str]) -> None:
    port = _free_port()
    result = _cli("start", "--host", "192.0.2.1", "--port", str(port), "--upstream", UP, env=env)
    assert result.returncode == 1
    assert result.stdout.strip() == (
        f"port {port}: cannot tell whether 192.0.2.1:{port} is free (binding it failed); "
        "not starting"
    )
    assert not InstanceFiles(runtime, port).pid.exists()


def test_start_when_our_instance_is_alive_but_silent(runtime: Path, env: dict[str, str]) -> None:
    port = _free_port()
    files = InstanceFiles(runtime, port)
    write_record(files, new_record(port, "127.0.0.1", None, files.log, ()))  # this very process
    result = _cli("start", "--port", str(port), "--upstream", UP, env=env)
    assert result.returncode == 1
    assert result.stdout.strip() == (
        f"port {port}: pid {os.getpid()} is ours but does not answer /health; "
        f"see {files.log} or 'proxyfleet stop --port {port}'"
    )
    assert files.pid.exists()  # left as it was


# -- stop, status, restart, logs of what is not running ----------------------------------------


def test_nothing_recorded(runtime: Path, env: dict[str, str]) -> None:
    port = _free_port()
    stop = _cli("stop", "--port", str(port), env=env)
    assert (stop.returncode, stop.stdout.strip()) == (
        0,
        f"port {port}: no instance recorded; nothing to stop",
    )
    assert _cli("stop", "--all", env=env).stdout.strip() == "no instances recorded"
    assert _cli("status", env=env).stdout.strip() == "no instances recorded"
    assert json.loads(_cli("status", "--json", env=env).stdout) == []
    restart = _cli("restart", "--port", str(port), env=env)
    assert (restart.returncode, restart.stdout.strip()) == (
        1,
        f"port {port}: no instance recorded; use 'proxyfleet start'",
    )
    logs = _cli("logs", "--port", str(port), env=env)
    assert (logs.returncode, logs.stdout.strip()) == (
        1,
        f"port {port}: no log at {InstanceFiles(runtime, port).log}",
    )


def test_status_of_a_running_and_a_stale_instance(runtime: Path, env: dict[str, str]) -> None:
    live, gone = sorted([_free_port(), _free_port()])
    live_files, gone_files = InstanceFiles(runtime, live), InstanceFiles(runtime, gone)
    write_record(live_files, new_record(live, "127.0.0.1", "/etc/pf.yaml", live_files.log, ()))
    dead = new_record(gone, "127.0.0.1", None, gone_files.log, ())
    write_record(gone_files, replace(dead, pid=DEAD_PID))
    rows = json.loads(_cli("status", "--json", env=env).stdout)
    assert [(r["port"], r["pid"], r["state"], r["health"], r["config"]) for r in rows] == [
        (live, os.getpid(), "running", "not answering", "/etc/pf.yaml"),
        (gone, DEAD_PID, "stale", "-", None),
    ]
    assert rows[0]["uptime"] >= 0
    assert rows[1]["uptime"] is None
    assert sorted(rows[0]) == ["config", "health", "log", "pid", "port", "state", "uptime"]
    write_record(gone_files, replace(dead, pid=DEAD_PID))  # status cleaned it: once more
    table = _cli("status", env=env).stdout.splitlines()
    assert table[0].split() == ["PORT", "PID", "STATE", "UPTIME", "HEALTH", "CONFIG", "/", "LOG"]
    assert table[1].split()[:3] == [str(live), str(os.getpid()), "running"]
    assert table[1].rstrip().endswith(f"/etc/pf.yaml  {live_files.log}")
    assert table[2].split()[:5] == [str(gone), str(DEAD_PID), "stale", "-", "-"]
    assert "(flags)" in table[2]
    assert live_files.pid.exists()


def test_status_cleans_stale_files_and_says_so_on_stderr(
    runtime: Path, env: dict[str, str]
) -> None:
    live, gone, torn, lock_only, held = sorted(_free_port() for _ in range(5))
    live_files, gone_files = InstanceFiles(runtime, live), InstanceFiles(runtime, gone)
    write_record(live_files, new_record(live, "127.0.0.1", None, live_files.log, ()))
    dead = new_record(gone, "127.0.0.1", None, gone_files.log, ())
    write_record(gone_files, replace(dead, pid=DEAD_PID))
    gone_files.lock.write_text("")  # left by the crash too
    gone_files.log.write_text("what happened\n")
    InstanceFiles(runtime, torn).pid.write_text("{torn")
    InstanceFiles(runtime, lock_only).lock.write_text("")  # a crash before the record
    held_files = InstanceFiles(runtime, held)
    with hold_instance_lock(held_files):  # an instance still starting: not stale
        result = _cli("status", "--json", env=env)
        rows = json.loads(result.stdout)
        assert [(r["port"], r["state"]) for r in rows] == [
            (p, s) for p, s in sorted([(live, "running"), (gone, "stale"), (torn, "stale")])
        ]
        assert result.stderr.splitlines() == [
            line
            for _, line in sorted(
                [
                    (
                        gone,
                        f"port {gone}: removing stale files of pid {DEAD_PID} "
                        "(the process is gone or is not ours)",
                    ),
                    (torn, f"port {torn}: removing an unreadable pid file"),
                    (lock_only, f"port {lock_only}: removing a stale lock file"),
                ]
            )
        ]
        assert sorted(p.name for p in runtime.iterdir()) == sorted(
            [live_files.pid.name, gone_files.log.name, held_files.lock.name]
        )
        again = _cli("status", env=env)
        assert again.stderr == ""
        assert [line.split()[0] for line in again.stdout.splitlines()] == ["PORT", str(live)]
    assert held_files.lock.exists() is False  # its holder removed it when it let go


def test_stop_cleans_a_stale_record_and_an_unreadable_one(
    runtime: Path, env: dict[str, str]
) -> None:
    stale, torn = _free_port(), _free_port()
    stale_files = InstanceFiles(runtime, stale)
    record = new_record(stale, "127.0.0.1", None, stale_files.log, ())
    write_record(stale_files, replace(record, pid=DEAD_PID))
    InstanceFiles(runtime, torn).pid.write_text("{torn")
    out = _cli("stop", "--all", env=env).stdout
    assert f"port {stale}: removing stale files of pid {DEAD_PID}" in out
    assert f"port {torn}: removing an unreadable pid file" in out
    assert not list(runtime.glob("*.pid"))
    assert _cli("status", env=env).stdout.strip() == "no instances recorded"


def test_status_with_a_plain_pid_file_does_not_crash(runtime: Path, env: dict[str, str]) -> None:
    runtime.mkdir()
    (runtime / "proxy_9000.pid").write_text("12345\n")
    result = run_cli("status", env=env)
    assert "Traceback" not in result.stderr
    assert result.returncode == 0


def test_logs_tail_and_follow_of_a_stopped_instance(runtime: Path, env: dict[str, str]) -> None:
    port = _free_port()
    files = InstanceFiles(runtime, port)
    runtime.mkdir()
    files.log.write_text("".join(f"line {n}\n" for n in range(100)))
    assert _cli("logs", "--port", str(port), env=env).stdout.splitlines() == [
        f"line {n}" for n in range(50, 100)
    ]  # 50 by default
    assert _cli("logs", "--port", str(port), "-n", "2", env=env).stdout == "line 98\nline 99\n"
    follow = _cli("logs", "--port", str(port), "-n", "1", "-f", env=env)  # nothing runs: ends
    assert (follow.returncode, follow.stdout) == (0, "line 99\n")


def test_the_runtime_dir_flag_beats_the_environment_and_xdg(tmp_path: Path) -> None:
    port = _free_port()
    places = {name: tmp_path / name for name in ("flag", "env", "xdg")}
    for place in places.values():
        place.mkdir()
    env = {"PROXYFLEET_RUNTIME_DIR": str(places["env"]), "XDG_RUNTIME_DIR": str(places["xdg"])}
    flagged = _cli("logs", "--port", str(port), "--runtime-dir", str(places["flag"]), env=env)
    assert flagged.stdout.strip().endswith(f"{places['flag']}/proxy_{port}.log")
    by_env = _cli("logs", "--port", str(port), env=env)
    assert by_env.stdout.strip().endswith(f"{places['env']}/proxy_{port}.log")
    by_xdg = _cli("logs", "--port", str(port), env={"XDG_RUNTIME_DIR": str(places["xdg"])})
    assert by_xdg.stdout.strip().endswith(f"{places['xdg']}/proxyfleet/proxy_{port}.log")


# -- deployments ----------------------------------------------------------------------------


def _deploy(tmp_path: Path, **nginx: object) -> Path:
    (tmp_path / "core.yaml").write_text(f"pool: {{upstreams: ['{UP}']}}\n")
    path = tmp_path / "deploy.yaml"
    data = {
        "nginx": {"port": 18500, **nginx},
        "servers": {
            "core": {"port": 18503, "instances": 2, "config": "core.yaml", "routes": ["/"]},
            "broker": {
                "port": 18501,
                "command": ["app", "--port", "{port}"],
                "routes": ["/api/v1/broker"],
                "websocket_routes": ["/api/v1/broker/ws"],
            },
        },
        "routing": {"core": "core"},
    }
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.mark.parametrize("command", ["up", "nginx render"])
def test_a_missing_or_invalid_deployment_exits_2(
    tmp_path: Path, env: dict[str, str], command: str
) -> None:
    missing = _cli(*command.split(), "-f", str(tmp_path / "nope.yaml"), env=env)
    assert missing.returncode == 2
    assert f"{tmp_path / 'nope.yaml'}: cannot read file" in missing.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        yaml.safe_dump(
            {
                "nginx": {"port": 18600},
                "servers": {"core": {"port": 18600, "command": ["x"], "routes": ["/"]}},
                "routing": {"core": "core"},
            }
        )
    )
    result = _cli(*command.split(), "-f", str(bad), env=env)
    assert result.returncode == 2
    assert (
        f"proxyfleet: config error: {bad}: servers.core.port: port 18600 is used by both "
        "nginx.port and servers.core"
    ) in result.stderr


def test_up_without_an_nginx_binary_exits_2_and_starts_nothing(
    tmp_path: Path, runtime: Path, env: dict[str, str]
) -> None:
    deploy = _deploy(tmp_path, binary=str(tmp_path / "no-nginx"))
    result = _cli("up", "-f", str(deploy), "--detach", env=env)
    assert result.returncode == 2
    assert result.stderr.strip() == (
        f"proxyfleet: config error: nginx.binary: {tmp_path / 'no-nginx'}: no such file"
    )
    assert not Manager(deploy, runtime, print).state_file.exists()
    assert _cli("ps", "-f", str(deploy), env=env).stdout.strip() == "not up"


def _never_run_nginx(tmp_path: Path) -> str:
    """An nginx that fails loudly if anything runs it: up must refuse before it would."""
    binary = tmp_path / "never-nginx"
    binary.write_text('#!/bin/sh\necho "nginx was run" >&2\nexit 1\n')
    binary.chmod(0o755)
    return str(binary)


def _with_redis(deploy: Path, redis: dict[str, object]) -> Path:
    data = yaml.safe_load(deploy.read_text())
    data["redis"] = redis
    deploy.write_text(yaml.safe_dump(data, sort_keys=False))
    return deploy


def test_up_of_two_instances_that_keep_their_pool_in_memory_exits_2(
    tmp_path: Path, runtime: Path, env: dict[str, str]
) -> None:
    """The shape that broke (each instance leased the same accounts): refused, naming the
    file and the field, before anything starts."""
    deploy = _deploy(tmp_path, binary=_never_run_nginx(tmp_path))
    result = _cli("up", "-f", str(deploy), "--detach", env=env)
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.startswith(
        f"proxyfleet: config error: {deploy}: servers.core.instances: 2 instances would each "
        f"keep a pool of their own ({tmp_path / 'core.yaml'} keeps the pool in memory)"
    ), result.stderr
    assert "add 'redis: {port: N}' to the deployment" in result.stderr
    assert "nginx was run" not in result.stderr
    assert not Manager(deploy, runtime, print).state_file.exists()


def test_up_with_a_redis_url_that_does_not_answer_starts_nothing(
    tmp_path: Path, runtime: Path, env: dict[str, str]
) -> None:
    dead = _free_port()
    deploy = _deploy(tmp_path, binary=_never_run_nginx(tmp_path))
    _with_redis(deploy, {"url": f"redis://:pw-secret@127.0.0.1:{dead}/0"})
    result = _cli("up", "-f", str(deploy), "--detach", env=env)
    assert result.returncode == 1, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith(f"redis at redis://127.0.0.1:{dead}/0 does not answer: "), lines
    assert lines[-1] == "not starting anything: start that Redis or change redis.url"
    assert "pw-secret" not in result.stdout + result.stderr
    assert "nginx was run" not in result.stderr
    assert not Manager(deploy, runtime, print).state_file.exists()


def test_up_with_a_redis_port_someone_holds_starts_nothing(
    tmp_path: Path, runtime: Path, env: dict[str, str]
) -> None:
    redisd.redis_server_binary()  # skips without redis-server
    deploy = _deploy(tmp_path, binary=_never_run_nginx(tmp_path))
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        _with_redis(deploy, {"port": port})
        result = _cli("up", "-f", str(deploy), "--detach", env=env)
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"port {port} (redis.port) is foreign: held by" in result.stdout
    assert "not starting anything" in result.stdout
    assert not Manager(deploy, runtime, print).state_file.exists()


def test_up_without_a_redis_binary_exits_2(
    tmp_path: Path, runtime: Path, env: dict[str, str]
) -> None:
    deploy = _deploy(tmp_path, binary=_never_run_nginx(tmp_path))
    _with_redis(deploy, {"port": _free_port(), "binary": "bin/no-redis-server"})
    result = _cli("up", "-f", str(deploy), "--detach", env=env)
    assert result.returncode == 2
    assert result.stderr.strip() == (
        f"proxyfleet: config error: redis.binary: {tmp_path / 'bin/no-redis-server'}: no such file"
    )
    assert not Manager(deploy, runtime, print).state_file.exists()


def test_ps_and_down_of_a_deployment_that_is_not_up(tmp_path: Path, env: dict[str, str]) -> None:
    deploy = _deploy(tmp_path)
    ps = _cli("ps", "-f", str(deploy), env=env)
    assert (ps.returncode, ps.stdout) == (0, "not up\n")
    ps_json = _cli("ps", "-f", str(deploy), "--json", env=env)
    assert (ps_json.returncode, json.loads(ps_json.stdout)) == (0, [])
    down = _cli("down", "-f", str(deploy), env=env)
    assert (down.returncode, down.stdout) == (0, "deploy.yaml is not up\n")
    gone = tmp_path / "gone.yaml"  # they read what was recorded: the file may be gone
    assert _cli("ps", "-f", str(gone), env=env).stdout == "not up\n"
    assert _cli("down", "-f", str(gone), env=env).stdout == "gone.yaml is not up\n"


def _record_state(deploy: Path, runtime: Path, processes: list[Process]) -> Manager:
    """A state file as 'up' writes it (the supervisor: this test process)."""
    manager = Manager(deploy, runtime, print)
    manager.processes = processes
    manager._save()
    return manager


def test_ps_shows_what_runs_and_what_is_gone(
    tmp_path: Path, runtime: Path, env: dict[str, str]
) -> None:
    deploy = _deploy(tmp_path)
    ticks = process_start_ticks(os.getpid())
    assert ticks is not None
    _record_state(
        deploy,
        runtime,
        [
            Process("worker", "core", 18503, os.getpid(), ticks, "/logs/core_18503.log"),
            Process("worker", "broker", 18501, DEAD_PID, 1, "/logs/broker_18501.log"),
            Process("redis", "redis", 18590, os.getpid(), ticks, "/logs/redis_18590.log"),
        ],
    )
    lines = _cli("ps", "-f", str(deploy), env=env).stdout.splitlines()
    assert lines[0].split() == ["ROLE", "SERVER", "PORT", "PID", "STATE", "LOG"]
    assert lines[1].split() == [
        "worker",
        "core",
        "18503",
        str(os.getpid()),
        "running",
        "/logs/core_18503.log",
    ]
    assert lines[2].split() == [
        "worker",
        "broker",
        "18501",
        str(DEAD_PID),
        "gone",
        "/logs/broker_18501.log",
    ]
    assert lines[3].split() == [
        "redis",
        "redis",
        "18590",
        str(os.getpid()),
        "running",
        "/logs/redis_18590.log",
    ]  # the deployment's Redis is a role of its own
    rows = json.loads(_cli("ps", "-f", str(deploy), "--json", env=env).stdout)
    assert rows == [
        {
            "role": "worker",
            "server": "core",
            "port": 18503,
            "pid": os.getpid(),
            "state": "running",
            "log": "/logs/core_18503.log",
        },
        {
            "role": "worker",
            "server": "broker",
            "port": 18501,
            "pid": DEAD_PID,
            "state": "gone",
            "log": "/logs/broker_18501.log",
        },
        {
            "role": "redis",
            "server": "redis",
            "port": 18590,
            "pid": os.getpid(),
            "state": "running",
            "log": "/logs/redis_18590.log",
        },
    ]  # the table's columns, as stable keys


def test_up_of_a_deployment_already_up_is_refused(
    tmp_path: Path, runtime: Path, env: dict[str, str]
) -> None:
    deploy = _deploy(tmp_path)
    ticks = process_start_ticks(os.getpid())
    assert ticks is not None
    manager = _record_state(
        deploy, runtime, [Process("worker", "core", 18503, os.getpid(), ticks, "/l")]
    )
    before = manager.state_file.read_text()
    result = _cli("up", "-f", str(deploy), "--detach", env=env)
    assert result.returncode == 1
    assert result.stdout.strip() == (
        "deploy.yaml is already up (1 processes); 'proxyfleet down' first"
    )
    assert manager.state_file.read_text() == before


def test_nginx_render_prints_the_generated_config(
    tmp_path: Path, runtime: Path, env: dict[str, str]
) -> None:
    deploy = _deploy(tmp_path)
    result = _cli("nginx", "render", "-f", str(deploy), env=env)
    assert result.returncode == 0, result.stderr
    prefix = Manager(deploy, runtime, print).prefix
    assert result.stdout == render_nginx(load_deployment(deploy), prefix)
    text = result.stdout
    assert "listen 127.0.0.1:18500;" in text
    assert "server 127.0.0.1:18503;\n        server 127.0.0.1:18504;" in text  # two instances
    assert "location = /api/v1/broker/ws {" in text
    assert f"pid {prefix}/nginx.pid;" in text  # under the runtime dir, never /etc
    assert result.stderr == ""
    assert not prefix.exists()  # rendering writes nothing


def test_nginx_render_to_a_file(tmp_path: Path, env: dict[str, str]) -> None:
    deploy = _deploy(tmp_path)
    target = tmp_path / "out" / "nginx.conf"
    target.parent.mkdir()
    result = _cli("nginx", "render", "-f", str(deploy), "-o", str(target), env=env)
    assert (result.returncode, result.stdout) == (0, "")
    assert target.read_text() == _cli("nginx", "render", "-f", str(deploy), env=env).stdout


def test_nginx_render_validate_without_nginx_exits_2(tmp_path: Path, env: dict[str, str]) -> None:
    deploy = _deploy(tmp_path, binary="/nonexistent/nginx")
    result = _cli("nginx", "render", "-f", str(deploy), "--validate", env=env)
    assert result.returncode == 2
    assert "nginx.binary: /nonexistent/nginx: no such file" in result.stderr
    assert result.stdout == ""


def _nginx() -> None:
    if shutil.which("nginx") is None and not Path("/usr/sbin/nginx").exists():
        if os.environ.get("CI") == "true":
            pytest.fail("CI must provide nginx (see .ci/run)")
        pytest.skip("needs nginx: apt-get install nginx-light")


def test_nginx_render_validate_with_the_real_nginx(
    tmp_path: Path, runtime: Path, env: dict[str, str]
) -> None:
    _nginx()
    deploy = _deploy(tmp_path)
    target = tmp_path / "nginx.conf"
    result = _cli("nginx", "render", "-f", str(deploy), "--validate", "-o", str(target), env=env)
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == f"nginx -t: {target} is valid"
    assert target.read_text().startswith("# generated by proxyfleet")
    printed = _cli("nginx", "render", "-f", str(deploy), "--validate", env=env)
    check = Manager(deploy, runtime, print).state_dir / "nginx-check.conf"
    assert printed.stderr.strip() == f"nginx -t: {check} is valid"
    assert printed.stdout == target.read_text()


def test_nginx_render_validate_reports_what_nginx_refuses(
    tmp_path: Path, runtime: Path, env: dict[str, str]
) -> None:
    refusing = tmp_path / "refusing-nginx"  # -t -q -p PREFIX -c CONF: CONF is $6
    refusing.write_text('#!/bin/sh\necho "nginx: [emerg] unknown directive in $6" >&2\nexit 1\n')
    refusing.chmod(0o755)
    deploy = _deploy(tmp_path, binary=str(refusing))
    result = _cli("nginx", "render", "-f", str(deploy), "--validate", env=env)
    assert result.returncode == 2
    check = Manager(deploy, runtime, print).state_dir / "nginx-check.conf"
    assert result.stderr.strip() == (
        f"proxyfleet: config error: {check}: nginx -t: nginx: [emerg] unknown directive in {check}"
    )  # nginx's own words
    assert result.stdout == ""  # nothing printed when nginx refuses it


def test_nginx_render_of_an_ipv6_host_passes_nginx_t(tmp_path: Path, env: dict[str, str]) -> None:
    _nginx()
    deploy = _deploy(tmp_path, host="::1")
    result = run_cli("nginx", "render", "-f", str(deploy), "--validate", env=env)
    assert result.returncode == 0, result.stderr


def test_nginx_render_validate_with_relative_paths(tmp_path: Path) -> None:
    """--runtime-dir, -f and -o relative to where the command runs: nginx is given absolute
    paths (it would read relative ones against its own prefix)."""
    _nginx()
    _deploy(tmp_path)
    for env in ({}, {"PROXYFLEET_RUNTIME_DIR": "rt"}):
        flags = [] if env else ["--runtime-dir", "rt"]
        result = _cli(
            "nginx",
            "render",
            "-f",
            "deploy.yaml",
            "--validate",
            "-o",
            "out.conf",
            *flags,
            env=env,
            cwd=tmp_path,
        )
        assert result.returncode == 0, result.stderr
        assert result.stderr.strip() == f"nginx -t: {tmp_path / 'out.conf'} is valid"
        prefix = Manager(tmp_path / "deploy.yaml", tmp_path / "rt", print).prefix
        assert f"pid {prefix}/nginx.pid;" in (tmp_path / "out.conf").read_text()
        printed = _cli(
            "nginx", "render", "-f", "deploy.yaml", "--validate", *flags, env=env, cwd=tmp_path
        )
        assert printed.returncode == 0, printed.stderr
        check = prefix.parent / "nginx-check.conf"
        assert printed.stderr.strip() == f"nginx -t: {check} is valid"


def test_a_relative_nginx_binary_is_relative_to_the_deployment_file(
    tmp_path: Path, env: dict[str, str]
) -> None:
    refusing = tmp_path / "bin" / "nginx"  # says which file it was given
    refusing.parent.mkdir()
    refusing.write_text('#!/bin/sh\necho "nginx: [emerg] checked $6" >&2\nexit 1\n')
    refusing.chmod(0o755)
    deploy = _deploy(tmp_path, binary="bin/nginx")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    result = _cli("nginx", "render", "-f", str(deploy), "--validate", env=env, cwd=elsewhere)
    assert result.returncode == 2
    assert "nginx -t: nginx: [emerg] checked /" in result.stderr  # it ran, with an absolute path
