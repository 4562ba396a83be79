"""Two hosts, one pool: network namespaces made by the test (and removed after it) stand for a
front host (Redis, nginx, the mock upstream, the clients) and two gateway hosts with two
gateways each, joined to the front by veth pairs. 200 concurrent streams through nginx,
spread over all four gateways: the upstream never sees two requests at once on an account.

Skipped, with the reason, where namespaces cannot be made (not root, no ``ip``, no
``redis-server`` or ``nginx``); every address used lives inside the namespaces made here.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from proxyfleet.mock.server import credential_label

_PATH = os.environ.get("PATH", "") + ":/usr/sbin:/sbin"
KEYS = {"acct-a": "sk-live-host-aaaa", "acct-b": "sk-live-host-bbbb", "acct-c": "sk-live-host-cccc"}
SRC = Path(__file__).resolve().parents[1] / "src"

CLIENT = r"""
import asyncio, json, sys, aiohttp
url, count = sys.argv[1], int(sys.argv[2])
body = {"model": "m", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
async def one(session):
    async with session.post(url + "/chat/completions", json=body) as response:
        data = await response.read()
        return response.status if data.rstrip().endswith(b"[DONE]") else -response.status
async def main():
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        print(json.dumps(await asyncio.gather(*(one(session) for _ in range(count)))))
asyncio.run(main())
"""

WAIT = r"""
import sys, time, urllib.request
deadline = time.monotonic() + 60
for url in sys.argv[1:]:
    while True:
        try:
            urllib.request.urlopen(url, timeout=1).close()
            break
        except OSError:
            if time.monotonic() > deadline:
                sys.exit(f"{url} never answered")
            time.sleep(0.1)
"""


def _tool(name: str) -> str:
    found = shutil.which(name, path=_PATH)
    if found is None:
        pytest.skip(f"needs {name}")
    return found


def _ip(*args: str) -> None:
    subprocess.run([_tool("ip"), *args], check=True, capture_output=True, timeout=20)


class Hosts:
    """The namespaces, their links and every process started in them."""

    def __init__(self, tmp: Path) -> None:
        tag = uuid.uuid4().hex[:6]
        self.front, self.hosts = f"pf-front-{tag}", [f"pf-h1-{tag}", f"pf-h2-{tag}"]
        self.tmp = tmp
        self.procs: list[subprocess.Popen[bytes]] = []
        self.made: list[str] = []

    def make(self) -> None:
        for ns in (self.front, *self.hosts):
            _ip("netns", "add", ns)
            self.made.append(ns)
            _ip("-n", ns, "link", "set", "lo", "up")
        for n, host in enumerate(self.hosts, start=1):
            front_end, host_end = f"pfa{n}{self.front[-6:]}"[:15], f"pfb{n}{self.front[-6:]}"[:15]
            _ip("link", "add", front_end, "netns", self.front, "type", "veth",
                "peer", "name", host_end, "netns", host)  # fmt: skip
            _ip("-n", self.front, "addr", "add", f"10.200.{n}.1/24", "dev", front_end)
            _ip("-n", host, "addr", "add", f"10.200.{n}.2/24", "dev", host_end)
            _ip("-n", self.front, "link", "set", front_end, "up")
            _ip("-n", host, "link", "set", host_end, "up")

    def run(self, ns: str, *args: str, log: str) -> subprocess.Popen[bytes]:
        env = dict(os.environ, PYTHONPATH=str(SRC), PYTHONUNBUFFERED="1")
        env = {k: v for k, v in env.items() if not k.startswith("PROXYFLEET_")}
        with (self.tmp / log).open("wb") as out:
            popen = subprocess.Popen(
                [_tool("ip"), "netns", "exec", ns, *args],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
            )  # fmt: skip
        self.procs.append(popen)
        return popen

    def python(self, ns: str, code: str, *args: str, timeout: float = 120) -> str:
        env = dict(os.environ, PYTHONPATH=str(SRC))
        result = subprocess.run(
            [_tool("ip"), "netns", "exec", ns, sys.executable, "-c", code, *args],
            capture_output=True, text=True, timeout=timeout, env=env, check=False,
        )  # fmt: skip
        assert result.returncode == 0, result.stdout + result.stderr
        return result.stdout

    def close(self) -> None:
        for popen in self.procs:
            if popen.poll() is None:
                popen.terminate()
        for popen in self.procs:
            try:
                popen.wait(10)
            except subprocess.TimeoutExpired:
                popen.kill()
                popen.wait(5)
        for ns in self.made:
            subprocess.run([_tool("ip"), "netns", "del", ns], capture_output=True, check=False)


@pytest.fixture
def hosts(tmp_path: Path) -> Iterator[Hosts]:
    if os.geteuid() != 0:
        pytest.skip("making network namespaces needs root")
    for tool in ("ip", "redis-server", "nginx"):
        _tool(tool)
    made = Hosts(tmp_path)
    try:
        made.make()
    except subprocess.CalledProcessError as exc:
        made.close()
        pytest.skip(f"cannot make network namespaces here: {exc.stderr.decode().strip()}")
    try:
        yield made
    finally:
        made.close()


NGINX = """
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/nginx-error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {dir}/b; proxy_temp_path {dir}/p; fastcgi_temp_path {dir}/f;
    uwsgi_temp_path {dir}/u; scgi_temp_path {dir}/s;
    upstream gateways {{ {servers} keepalive 64; }}
    server {{
        listen 127.0.0.1:8000;
        location / {{
            proxy_pass http://gateways;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
        }}
    }}
}}
"""


def test_two_hosts_with_two_gateways_each_share_one_single_flight_pool(hosts: Hosts) -> None:
    py = sys.executable
    front = hosts.front
    hosts.run(front, _tool("redis-server"), "--bind", "10.200.1.1", "10.200.2.1",
              "--port", "6390", "--save", "", "--appendonly", "no", "--protected-mode", "no",
              "--dir", str(hosts.tmp), log="redis.log")  # fmt: skip
    hosts.run(front, py, "-m", "proxyfleet", "mock", "--host", "0.0.0.0", "--port", "9100",
              "--chunks", "4", "--latency", "0.05", log="mock.log")  # fmt: skip
    gateways = []
    for n, host in enumerate(hosts.hosts, start=1):
        config = {
            "upstream": {"base_url": f"http://10.200.{n}.1:9100/v1"},
            "pool": {
                "backends": [{"id": k, "api_key": v} for k, v in KEYS.items()],
                "lease_timeout": 60,
                "store": {"redis": {"url": f"redis://10.200.{n}.1:6390/0", "key_prefix": "two"}},
            },
        }
        path = hosts.tmp / f"host{n}.yaml"
        path.write_text(json.dumps(config))
        for port in (9001, 9002):
            hosts.run(host, py, "-m", "proxyfleet", "serve", "--config", str(path),
                      "--host", "0.0.0.0", "--port", str(port),
                      log=f"gateway-{n}-{port}.log")  # fmt: skip
            gateways.append(f"10.200.{n}.2:{port}")
    hosts.python(front, WAIT, "http://127.0.0.1:9100/health",
                 *(f"http://{g}/live" for g in gateways))  # fmt: skip
    # (the gateways listen on their host's every address: 10.200.N.2 for nginx, loopback too)
    servers = " ".join(f"server {g};" for g in gateways)
    (hosts.tmp / "nginx.conf").write_text(NGINX.format(dir=hosts.tmp, servers=servers))
    hosts.run(front, _tool("nginx"), "-p", str(hosts.tmp), "-c", str(hosts.tmp / "nginx.conf"),
              "-g", "daemon off;", log="nginx.log")  # fmt: skip
    hosts.python(front, WAIT, "http://127.0.0.1:8000/live")
    started = time.monotonic()
    statuses = json.loads(hosts.python(front, CLIENT, "http://127.0.0.1:8000/v1", "200"))
    took = time.monotonic() - started
    assert statuses == [200] * 200, sorted(set(statuses))
    stats = json.loads(
        hosts.python(
            front,
            "import urllib.request; print(urllib.request"
            ".urlopen('http://127.0.0.1:9100/mock/stats').read().decode())",
        )
    )
    peaks = {k: c["peak"] for k, c in stats["credentials"].items()}
    assert peaks == {credential_label(f"Bearer {key}"): 1 for key in KEYS.values()}, peaks
    # any gateway shows the fleet (admin answers loopback clients: ask from its own host)
    served = json.loads(
        hosts.python(
            hosts.hosts[0],
            "import urllib.request; print(urllib.request"
            ".urlopen('http://127.0.0.1:9001/admin/pool').read().decode())",
        )
    )
    assert sum(b["leases_served"] for b in served["backends"]) == 200  # the fleet's count
    assert len(served["store"]["processes"]) == 4  # two hosts, two gateways each
    print(f"two hosts: 200 streams through 4 gateways in {took:.1f} s, per-account peak 1")
