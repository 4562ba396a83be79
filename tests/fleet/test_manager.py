"""Multi-process mode with real processes and real nginx: up, routing, down, rollback, watch."""

from __future__ import annotations

import asyncio
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import websockets
import yaml

from proxyfleet.fleet.nginx import find_nginx
from tests.codex import codex_exec
from tests.conftest import Proc, Processes, cli_env, run_cli

pytestmark = pytest.mark.skipif(
    shutil.which("nginx") is None
    and not Path("/usr/sbin/nginx").exists()
    and os.environ.get("CI") != "true",
    reason="needs nginx: apt-get install nginx-light",
)


def _ports(n: int) -> list[int]:
    """n consecutive free ports (a server's instances take port, port+1, …), below the
    ephemeral range: no outgoing connection takes one meanwhile, none is left in TIME_WAIT by
    an earlier test's clients, and a health check of one not listening yet cannot meet
    itself. Probed as the servers bind (SO_REUSEADDR)."""
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    rng = random.Random()
    for _ in range(200):
        base = rng.randrange(10_000, max(10_001, low - n))
        free = True
        for port in range(base, base + n):
            with socket.socket() as s:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    s.bind(("127.0.0.1", port))
                except OSError:
                    free = False
                    break
        if free:
            return list(range(base, base + n))
    raise RuntimeError("no run of free ports")


def _mock(name: str) -> list[str]:
    # through sh, so that every worker has a grandchild: down must stop those too
    return ["sh", "-c", f"{sys.executable} -m proxyfleet mock --port {{port}} --name {name} & wait"]


@pytest.fixture
def layout(tmp_path: Path, procs: Processes) -> Iterator[dict[str, Any]]:
    ports = _ports(8)
    upstream = procs.mock("--name", "upstream")
    (tmp_path / "core.yaml").write_text(yaml.safe_dump({"pool": {"upstreams": [upstream.url]}}))
    data = {
        "nginx": {"port": ports[0]},
        "redis": {"port": ports[7]},  # the core's two instances share one pool
        "servers": {
            "core": {
                "port": ports[1],
                "instances": 2,
                "config": "core.yaml",
                "routes": ["/"],
                "health": "/ready",
            },
            "broker": {
                "port": ports[3],
                "instances": 2,
                "command": _mock("broker"),
                "routes": ["/v1/broker"],
            },
            "datafeed": {
                "port": ports[5],
                "instances": 2,
                "command": _mock("datafeed"),
                "routes": ["/v1/datafeed"],
                "websocket_routes": ["/v1/responses"],
            },
        },
        "routing": {"core": "core"},
    }
    deploy = tmp_path / "deploy.yaml"
    deploy.write_text(yaml.safe_dump(data, sort_keys=False))
    env = {"PROXYFLEET_RUNTIME_DIR": str(tmp_path / "runtime")}
    yield {"deploy": deploy, "data": data, "env": env, "ports": ports, "upstream": upstream}
    run_cli("down", "-f", str(deploy), env=env)


def _listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
    except OSError:
        return False
    return True


def _get(port: int, path: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
        return json.load(response)  # type: ignore[no-any-return]


def _group_pids(pids: list[int]) -> set[int]:
    """Every process in the process groups led by ``pids`` (children and grandchildren)."""
    out = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) in pids and fields[0] != "Z":
                out.add(int(entry.name))
    return out


def test_up_routes_rest_and_websocket_then_down_leaves_nothing(layout: dict[str, Any]) -> None:
    deploy, env, ports = layout["deploy"], layout["env"], layout["ports"]
    up = run_cli("up", "-f", str(deploy), "--detach", env=env, timeout=90)
    assert up.returncode == 0, up.stdout + up.stderr
    nginx = ports[0]
    assert _get(nginx, "/v1/broker/orders")["mock"] == "broker"
    assert _get(nginx, "/v1/datafeed/ticks")["mock"] == "datafeed"
    assert _get(nginx, "/v1/anything")["mock"] == "upstream"  # core: a proxyfleet gateway
    seen = {_get(nginx, "/v1/broker/x")["mock"] for _ in range(4)}
    assert seen == {"broker"}

    async def websocket() -> str:
        async with websockets.connect(f"ws://127.0.0.1:{nginx}/v1/responses") as ws:
            await ws.send(json.dumps({"type": "response.create", "model": "m", "input": "hi"}))
            while (event := json.loads(await ws.recv()))["type"] != "response.completed":
                pass
            return str(event["type"])

    assert asyncio.run(websocket()) == "response.completed"
    datafeed_ws = sum(
        sum(1 for r in _get(port, "/mock/stats")["recent"] if r["path"] == "/v1/responses")
        for port in (ports[5], ports[6])
    )
    assert datafeed_ws == 1  # the WebSocket reached a datafeed instance
    ps = run_cli("ps", "-f", str(deploy), env=env).stdout
    assert ps.count("running") == 8  # nginx, six workers, redis
    state = json.loads(
        next(Path(env["PROXYFLEET_RUNTIME_DIR"]).glob("deploy-*/state.json")).read_text()
    )
    leaders = [p["pid"] for p in state["processes"]]
    everyone = _group_pids(leaders)
    assert len(everyone) > len(leaders)  # the sh wrappers' mocks, nginx's worker
    down = run_cli("down", "-f", str(deploy), env=env, timeout=60)
    assert down.returncode == 0, down.stdout
    assert "down: stopped 8 processes" in down.stdout
    time.sleep(0.2)
    assert not _group_pids(leaders)
    assert all(
        not Path(f"/proc/{pid}").exists()
        or (Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z")
        for pid in everyone
    )
    assert run_cli("ps", "-f", str(deploy), env=env).stdout.strip() == "not up"


README = Path(__file__).resolve().parents[2] / "README.md"


def _readme_deployment() -> dict[str, Any]:
    """The README's deploy.yaml, as written (its ports and its broker's command are filled in
    by the test)."""
    text = README.read_text()
    block = text.split("```yaml\n# deploy.yaml\n", 1)[1].split("```", 1)[0]
    data: dict[str, Any] = yaml.safe_load(block)
    return data


@pytest.fixture
def readme_fleet(tmp_path: Path, procs: Processes) -> Iterator[tuple[int, Proc]]:
    """The README's deployment up (detached): nginx's port, and the core's upstream mock."""
    upstream = procs.mock("--name", "upstream")
    data = _readme_deployment()
    core, broker = data["servers"]["core"], data["servers"]["broker"]
    assert "websocket_routes" not in core
    assert core["routes"] == ["/"]
    ports = _ports(2 + core["instances"] + broker["instances"])
    data["nginx"]["port"], data["redis"]["port"] = ports[:2]
    core["port"] = ports[2]
    broker["port"] = ports[2 + core["instances"]]
    broker["command"] = _mock("broker")  # the README's broker_app is only an example
    (tmp_path / core["config"]).write_text(yaml.safe_dump({"pool": {"upstreams": [upstream.url]}}))
    deploy = tmp_path / "deploy.yaml"
    deploy.write_text(yaml.safe_dump(data, sort_keys=False))
    env = {"PROXYFLEET_RUNTIME_DIR": str(tmp_path / "runtime")}
    try:
        up = run_cli("up", "-f", str(deploy), "--detach", env=env, timeout=90)
        assert up.returncode == 0, up.stdout + up.stderr
        yield ports[0], upstream
    finally:
        run_cli("down", "-f", str(deploy), env=env, timeout=60)


def test_the_responses_websocket_works_on_the_catch_all_of_the_readme_layout(
    readme_fleet: tuple[int, Proc],
) -> None:
    """Codex's WebSocket (GET /v1/responses with Upgrade) on a proxyfleet server that lists no
    websocket_routes: nginx's catch-all passes the upgrade, the gateway reaches the upstream's
    WebSocket; a plain GET there is 426 in the OpenAI error shape, never forwarded."""
    nginx, upstream = readme_fleet

    async def websocket() -> list[str]:
        url = f"ws://127.0.0.1:{nginx}/v1/responses"
        async with websockets.connect(url, open_timeout=10) as ws:
            frame = {"type": "response.create", "model": "m", "input": "hi", "stream": True}
            await ws.send(json.dumps(frame))
            types: list[str] = []
            for _ in range(200):  # bounded: the mock sends a dozen events
                types.append(json.loads(await asyncio.wait_for(ws.recv(), 10))["type"])
                if types[-1] == "response.completed":
                    break
            return types

    types = asyncio.run(websocket())
    assert types[0] == "response.created"
    assert "response.output_text.delta" in types
    assert types[-1] == "response.completed"
    upgraded = [
        r
        for r in upstream.get_json("/mock/stats")["recent"]
        if r["path"] == "/v1/responses" and "upgrade" in r["headers"]
    ]
    assert len(upgraded) == 1  # the WebSocket went all the way to the upstream
    with pytest.raises(urllib.error.HTTPError) as plain:
        urllib.request.urlopen(f"http://127.0.0.1:{nginx}/v1/responses", timeout=5)
    with plain.value as answer:
        assert answer.status == 426
        body = json.load(answer)
    assert body["error"]["code"] == "websocket_required"
    assert body["error"]["type"] == "invalid_request_error"
    assert isinstance(body["error"]["message"], str)
    after = upstream.get_json("/mock/stats")["recent"]
    assert sum(1 for r in after if r["path"] == "/v1/responses") == 1  # never forwarded


def test_codex_behind_up_over_websocket(readme_fleet: tuple[int, Proc], tmp_path: Path) -> None:
    """The Codex CLI itself, its provider's base_url at nginx (supports_websockets = true, as
    the README shows): every turn over the catch-all's WebSocket, no fallback to POST."""
    nginx, upstream = readme_fleet
    events = codex_exec(
        f"http://127.0.0.1:{nginx}/v1", tmp_path / "codex-home", tmp_path / "work", "say hi"
    )
    assert any(e.get("type") == "turn.completed" for e in events), events
    recent = upstream.get_json("/mock/stats")["recent"]
    calls = [
        (r["method"], "upgrade" in r["headers"]) for r in recent if r["path"] == "/v1/responses"
    ]
    assert calls, recent
    assert set(calls) == {("GET", True)}, calls  # WebSocket only


def test_up_ps_down_with_relative_paths(tmp_path: Path, procs: Processes) -> None:
    """--runtime-dir and -f relative to where each command runs, nginx.binary and the server's
    config relative to the deployment file: nginx gets absolute paths, every command finds
    the same deployment."""
    upstream = procs.mock("--name", "upstream")
    nginx_port, core_port = _ports(2)
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "nginx").symlink_to(find_nginx(None))
    (tmp_path / "core.yaml").write_text(yaml.safe_dump({"pool": {"upstreams": [upstream.url]}}))
    data = {
        "nginx": {"port": nginx_port, "binary": "bin/nginx"},
        "servers": {
            "core": {"port": core_port, "config": "core.yaml", "routes": ["/"], "health": "/ready"}
        },
        "routing": {"core": "core"},
    }
    (tmp_path / "deploy.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    sub = tmp_path / "sub"
    sub.mkdir()
    try:
        up = run_cli("up", "-f", "deploy.yaml", "--runtime-dir", "rt", "--detach", cwd=tmp_path)
        assert up.returncode == 0, up.stdout + up.stderr
        assert f"logs in {tmp_path / 'rt'}/deploy-deploy-" in up.stdout
        assert _get(nginx_port, "/v1/anything")["mock"] == "upstream"
        flags = ["-f", "../deploy.yaml", "--runtime-dir", "../rt"]
        ps = run_cli("ps", *flags, "--json", cwd=sub)
        assert [(p["role"], p["state"]) for p in json.loads(ps.stdout)] == [
            ("worker", "running"),
            ("nginx", "running"),
        ]
        down = run_cli("down", *flags, cwd=sub, timeout=60)
        assert (down.returncode, down.stdout.strip()) == (0, "down: stopped 2 processes")
        assert not _listening(nginx_port)
    finally:
        run_cli("down", "-f", str(tmp_path / "deploy.yaml"), "--runtime-dir", str(tmp_path / "rt"))


def test_racing_ups_of_one_deployment_leave_one_fleet_that_down_stops(
    tmp_path: Path, procs: Processes
) -> None:
    upstream = procs.mock("--name", "upstream")
    ports = _ports(3)
    (tmp_path / "core.yaml").write_text(yaml.safe_dump({"pool": {"upstreams": [upstream.url]}}))
    data = {
        "nginx": {"port": ports[0]},
        "servers": {
            "core": {"port": ports[1], "config": "core.yaml", "routes": ["/"], "health": "/ready"},
            "broker": {"port": ports[2], "command": _mock("broker"), "routes": ["/v1/broker"]},
        },
        "routing": {"core": "core"},
    }
    deploy = tmp_path / "deploy.yaml"
    deploy.write_text(yaml.safe_dump(data, sort_keys=False))
    env = {"PROXYFLEET_RUNTIME_DIR": str(tmp_path / "runtime")}
    command = [sys.executable, "-m", "proxyfleet", "up", "-f", str(deploy), "--detach"]
    racers = [
        subprocess.Popen(
            command,
            env=cli_env(env),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
        )
        for _ in range(2)
    ]
    try:
        outcomes = [(racer.wait(90), racer.communicate(timeout=10)[0]) for racer in racers]
        assert sorted(code for code, _ in outcomes) == [0, 1], outcomes
        loser = next(out for code, out in outcomes if code == 1)
        assert loser.strip() in (
            "another 'proxyfleet up' of deploy.yaml is under way; not starting",
            "deploy.yaml is already up (3 processes); 'proxyfleet down' first",
        )
        assert _get(ports[0], "/v1/broker/x")["mock"] == "broker"
        assert run_cli("ps", "-f", str(deploy), env=env).stdout.count("running") == 3
    finally:
        down = run_cli("down", "-f", str(deploy), env=env, timeout=60)
    assert "down: stopped 3 processes" in down.stdout, down.stdout
    time.sleep(0.2)
    assert not [p for p in ports if _listening(p)]  # nothing left behind


def test_a_blocked_port_fails_up_with_nothing_running(layout: dict[str, Any]) -> None:
    deploy, env, ports = layout["deploy"], layout["env"], layout["ports"]
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", ports[4]))  # broker's second instance
        holder.listen()
        up = run_cli("up", "-f", str(deploy), "--detach", env=env, timeout=60)
    assert up.returncode == 1
    assert f"port {ports[4]} (servers.broker) is foreign" in up.stdout
    assert "not starting anything" in up.stdout
    assert not [p for p in ports if _listening(p)]  # nothing was started


def test_a_worker_that_never_gets_healthy_rolls_everything_back(layout: dict[str, Any]) -> None:
    deploy, env, data = layout["deploy"], layout["env"], layout["data"]
    data["servers"]["broker"]["health"] = "/no-such-path"
    deploy.write_text(yaml.safe_dump(data, sort_keys=False))
    up = run_cli("up", "-f", str(deploy), "--detach", "--wait", "3", env=env, timeout=60)
    assert up.returncode == 1
    assert "did not answer /no-such-path" in up.stdout
    assert "rolling back" in up.stdout
    time.sleep(0.2)
    assert not [p for p in layout["ports"] if _listening(p)]  # nothing left listening


def test_foreground_up_stops_everything_on_ctrl_c_and_watches(layout: dict[str, Any]) -> None:
    deploy, env, data, ports = layout["deploy"], layout["env"], layout["data"], layout["ports"]
    log = deploy.parent / "up.log"
    with log.open("wb") as handle:
        up = subprocess.Popen(
            [sys.executable, "-m", "proxyfleet", "up", "-f", str(deploy), "--watch"],
            stdout=handle,
            stderr=subprocess.STDOUT,
            env=cli_env(env),
            stdin=subprocess.DEVNULL,
        )
    try:
        deadline = time.monotonic() + 60
        while "running in the foreground" not in log.read_text():
            assert up.poll() is None, log.read_text()
            assert time.monotonic() < deadline
            time.sleep(0.1)
        nginx = ports[0]
        # a valid change: a new route for the broker, applied within 2 s
        data["servers"]["broker"]["routes"] = ["/v1/broker", "/v1/orders"]
        deploy.write_text(yaml.safe_dump(data, sort_keys=False))
        changed = time.monotonic()
        while True:
            try:
                if _get(nginx, "/v1/orders/1")["mock"] == "broker":
                    break
            except OSError:
                pass
            assert time.monotonic() - changed < 2.0, log.read_text()
            time.sleep(0.05)
        assert "change applied: nginx reloaded; servers restarted or changed: none" in (
            log.read_text()
        )  # a route change only reloads nginx
        # an invalid change: refused, and the fleet keeps serving as it was
        data["servers"]["datafeed"]["port"] = ports[3]
        deploy.write_text(yaml.safe_dump(data, sort_keys=False))
        end = time.monotonic() + 5
        while "change refused" not in log.read_text():
            assert time.monotonic() < end, log.read_text()
            time.sleep(0.05)
        assert "port " in log.read_text().split("change refused")[1]
        assert _get(nginx, "/v1/datafeed/x")["mock"] == "datafeed"
        # a server moved onto a port someone else holds: refused before anything stops
        data["servers"]["datafeed"]["port"] = ports[5]
        spare = _ports(2)
        with socket.socket() as holder:
            holder.bind(("127.0.0.1", spare[0]))
            holder.listen()
            data["servers"]["broker"]["port"] = spare[0]
            deploy.write_text(yaml.safe_dump(data, sort_keys=False))
            end = time.monotonic() + 5
            while log.read_text().count("change refused") < 2:
                assert time.monotonic() < end, log.read_text()
                time.sleep(0.05)
            assert f"servers.broker needs port {spare[0]}, held by" in log.read_text()
            assert _get(nginx, "/v1/broker/x")["mock"] == "broker"
        state = json.loads(
            next(Path(env["PROXYFLEET_RUNTIME_DIR"]).glob("deploy-*/state.json")).read_text()
        )
        leaders = [p["pid"] for p in state["processes"]]
        up.send_signal(signal.SIGINT)
        assert up.wait(60) == 0, log.read_text()
        time.sleep(0.2)
        assert not _group_pids(leaders)
    finally:
        if up.poll() is None:
            up.kill()
            up.wait(10)
