"""Where a route's upstreams come from (:mod:`proxyfleet.mcpproxy.supply`), with real mirror
server processes: prestarted children warmed and topped up, a child leased for a stateless
exchange and given back (within bounds), stopped in the background, and whether the route's
server starts: a command that cannot run or a server that exits at once makes it failing, a
re-check sees it fixed (and keeps that server as a spare when ``prestart`` wants one)."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from proxyfleet.config.model import McpRouteConfig
from proxyfleet.errors import SpawnFailed
from proxyfleet.mcpproxy.jsonrpc import Message
from proxyfleet.mcpproxy.supply import Supply
from tests.mcpproxy.support import line, mirror, my_children, reaped, request, until

MakeSupply = Callable[..., Any]


@pytest.fixture
async def make_supply() -> AsyncIterator[MakeSupply]:
    """``supply = await make_supply(command=..., **route_config)``: started, stopped at the end."""
    made: list[Supply] = []

    async def start(command: list[str] | None = None, **config: Any) -> Supply:
        route = McpRouteConfig(path="/m", upstream={"command": command or mirror()}, **config)
        supply = Supply(route)
        await supply.start(None)
        made.append(supply)
        return supply

    yield start
    for supply in made:
        await supply.stop()
    assert my_children() == []


async def test_take_gives_a_warm_spare_and_tops_them_up(make_supply: MakeSupply) -> None:
    supply = await make_supply(prestart=1)
    described = supply.describe()
    assert (described["prestarted"], described["children_started"], described["status"]) == (
        1,
        1,
        "ok",  # the spare answered its ping: the server starts
    )
    child = await supply.take()
    assert child.alive
    assert child.spoke
    await until(lambda: supply.describe()["prestarted"] == 1, timeout=10)
    assert supply.describe()["children_started"] == 2
    await child.stop(1.0)


async def test_lease_never_takes_a_spare_and_give_back_keeps_a_few(
    make_supply: MakeSupply,
) -> None:
    supply = await make_supply(prestart=1)
    leased = [await supply.lease() for _ in range(5)]
    assert supply.describe()["prestarted"] == 1  # a spare is bound to the handshake
    assert [supply.give_back(child) for child in leased] == [True] * 4 + [False]
    assert supply.describe()["stateless_idle"] == 4  # max(4, prestart)
    again = await supply.lease()
    assert again is leased[3]  # the last one given back
    supply.stop_later(leased[4])
    supply.stop_later(again)
    await until(lambda: not leased[4].alive and not again.alive, timeout=10)
    supply.closing = True
    assert supply.give_back(leased[0]) is False  # no more once the route stops


async def test_a_command_that_cannot_run_makes_it_failing(make_supply: MakeSupply) -> None:
    supply = await make_supply(command=["/no/such/mcp-server"])
    assert supply.describe()["status"] == "unknown"
    with pytest.raises(SpawnFailed):
        await supply.take()
    described = supply.describe()
    assert (described["status"], described["failed_starts"], described["spawn_failures"]) == (
        "failing",
        1,
        1,
    )
    assert described["reason"] == (
        "cannot start the MCP server '/no/such/mcp-server': No such file or directory"
    )
    assert supply.start_health.failing


async def test_a_prestarted_route_is_checked_at_start_and_rechecked_until_fixed(
    make_supply: MakeSupply, tmp_path: Path
) -> None:
    broken = tmp_path / "broken"
    broken.touch()
    supply = await make_supply(command=mirror("--fail-if", str(broken)), prestart=1)
    described = supply.describe()
    assert described["status"] == "failing"  # known before any session
    assert described["reason"].startswith("its server exits before answering: the MCP server")
    assert described["reason"].endswith(
        f"exited with code 1; last stderr: cannot start: {broken} exists"
    )
    assert described["prestarted"] == 0
    broken.unlink()  # fixed: the re-check (after a second) sees it, and keeps it as the spare
    await until(lambda: supply.describe()["status"] == "ok", timeout=15)
    await until(lambda: supply.describe()["prestarted"] == 1, timeout=15)
    assert supply.describe()["reason"] is None


async def test_a_server_that_spoke_before_it_exited_did_start(make_supply: MakeSupply) -> None:
    supply = await make_supply()
    heard: list[Message] = []
    child = await supply.take()
    child.on_message = supply.listen(child, heard.append)
    child.send(line(request(1, "ping")))
    await until(lambda: heard, timeout=10)
    assert supply.describe()["status"] == "ok"
    os.kill(child.pid or 0, 9)
    await until(lambda: not child.alive, timeout=10)
    supply.judge_exit(child)
    assert supply.describe()["status"] == "ok"  # a death, not a start that failed
    assert reaped(child.pid or 0)
