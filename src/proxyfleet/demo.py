"""``proxyfleet demo``: the embedded default. No config, no network beyond loopback.

Starts the mock upstream with N accounts, puts the gateway in front of them, sends a burst of
concurrent streaming requests while drawing the pool live, proves single-flight from the mock's
own counters, then keeps serving until Ctrl+C.
"""

from __future__ import annotations

import asyncio
import json
import time

import aiohttp
import uvloop
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from proxyfleet._net import bind
from proxyfleet.config.model import Config, PoolConfig, ServerConfig
from proxyfleet.gateway.app import Gateway
from proxyfleet.gateway.server import GatewayServer, uvicorn_config
from proxyfleet.mock.runner import running_mock
from proxyfleet.mock.server import MockSettings, credential_label
from proxyfleet.pool import BackendSpec, BackendStatus

__all__ = ["run_demo"]

_STYLE = {
    "idle": "green",
    "busy": "yellow",
    "unhealthy": "red",
    "half_open": "magenta",
    "draining": "blue",
}


def _view(
    gateway: Gateway, statuses: list[BackendStatus], done: int, total: int, started: float
) -> Group:
    table = Table(title="proxyfleet pool (single-flight, lru)", expand=False)
    for column in ("backend", "state", "serving request", "served", "failures"):
        table.add_column(column)
    for status in statuses:
        table.add_row(
            status.id,
            Text(status.state, style=_STYLE.get(status.state, "")),
            ", ".join(status.serving) or "-",
            str(status.leases_served),
            str(status.failures),
        )
    line = Text(
        f"requests done {done}/{total}   waiting for a backend: {gateway.pool.waiting}   "
        f"elapsed {time.monotonic() - started:4.1f}s"
    )
    return Group(table, line)


async def _one(session: aiohttp.ClientSession, url: str, n: int) -> int:
    body = {
        "model": "mock-gpt",
        "stream": True,
        "messages": [{"role": "user", "content": f"demo request {n}"}],
    }
    async with session.post(url, json=body, headers={"X-Request-ID": f"demo-{n}"}) as response:
        async for _ in response.content.iter_any():
            pass
        return response.status


async def _burst(gateway: Gateway, url: str, total: int, console: Console) -> list[int]:
    started = time.monotonic()
    done = 0

    async def counted(session: aiohttp.ClientSession, n: int) -> int:
        nonlocal done
        try:
            return await _one(session, url, n)
        finally:
            done += 1

    async with aiohttp.ClientSession() as session:
        tasks = [asyncio.ensure_future(counted(session, n)) for n in range(total)]
        with Live(
            _view(gateway, await gateway.pool.snapshot(), done, total, started),
            console=console,
            refresh_per_second=12,
            transient=False,
        ) as live:
            while not all(t.done() for t in tasks):
                await asyncio.sleep(0.08)
                live.update(_view(gateway, await gateway.pool.snapshot(), done, total, started))
        return [t.result() for t in tasks]


async def _run(port: int, accounts: int, burst: int, serve: bool, console: Console) -> int:
    settings = MockSettings(ttft=0.15, latency=0.04, chunks=16, name="demo-mock")
    async with running_mock("127.0.0.1", 0, settings) as mock:
        keys = [f"demo-key-{i + 1}" for i in range(accounts)]
        backends = [
            BackendSpec(
                f"account-{i + 1}", mock.base_url, (("Authorization", f"Bearer {key}"),), 1, "demo"
            )
            for i, key in enumerate(keys)
        ]
        config = Config(server=ServerConfig(port=port), pool=PoolConfig(lease_timeout=120))
        sock = bind("127.0.0.1", port, "demo gateway")
        port = sock.getsockname()[1]  # --port 0: the one the system chose
        gateway = Gateway(config, backends)
        server = GatewayServer(uvicorn_config(gateway, config), gateway.begin_drain)
        serving = asyncio.ensure_future(server.serve(sockets=[sock]))
        while not server.started:
            if serving.done():
                return 1
            await asyncio.sleep(0.02)
        url = f"http://127.0.0.1:{port}/v1"
        console.print(
            f"[bold]mock upstream[/] {mock.base_url} with {accounts} accounts; "
            f"[bold]gateway[/] {url}"
        )
        console.print(f"sending {burst} concurrent streaming chat completions…")
        statuses = await _burst(gateway, url + "/chat/completions", burst, console)
        stats = mock.app_stats()
        ok = sum(1 for s in statuses if s == 200)
        console.print(f"\n{ok}/{burst} succeeded. The mock's own counters, per account:")
        for i, key in enumerate(keys):
            counter = stats["credentials"].get(credential_label(f"Bearer {key}"), {})
            console.print(
                f"  account-{i + 1}: {counter.get('requests', 0)} requests, "
                f"peak concurrency {counter.get('peak', 0)}"
            )
        if serve:
            example = json.dumps(
                {"model": "mock-gpt", "messages": [{"role": "user", "content": "hi"}]}
            )
            console.print(
                f"\nServing on {url} until Ctrl+C. Point a client at it:\n"
                f"  curl {url}/chat/completions -H 'Content-Type: application/json' "
                f"-d '{example}'\n"
                f'  OpenAI(base_url="{url}", api_key="unused")\n'
                f"  pool state: curl http://127.0.0.1:{port}/admin/pool"
            )
        else:
            server.should_exit = True
        await serving
        return 0 if ok == burst else 1


def run_demo(port: int, accounts: int, burst: int, *, serve: bool) -> int:
    console = Console()
    return uvloop.run(_run(port, accounts, burst, serve, console))
