"""A client session and its exchanges (:mod:`proxyfleet.mcpproxy.session`): responses to the
POST waiting for their id, server messages to the oldest open exchange, else the GET stream,
else the backlog; the legacy transport; a dead upstream; ending a session; what it describes.
Requests bounded by ``request_timeout`` (an error, and the server asked to cancel), on both
transports; a legacy session's waiting requests answered with errors on its stream and counted
in flight. The upstream is a real stdio child (the mirror server)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson
import pytest

from proxyfleet.mcpproxy.child import Child
from proxyfleet.mcpproxy.jsonrpc import REQUEST_TIMEOUT, Message
from proxyfleet.mcpproxy.session import Exchange, Session, SessionState
from tests.mcpproxy.support import drain, mirror, msg, request, until

Make = Callable[..., Any]


def _unrouted(message: Message) -> None:
    raise AssertionError(f"a message before the session took the child: {message.raw!r}")


@pytest.fixture
async def make() -> AsyncIterator[Make]:
    """``session = await make(legacy=False, **options)``: a session on its own mirror child."""
    children: list[Child] = []

    async def open_session(legacy: bool = False, **options: Any) -> Session:
        child = Child(mirror(), dict(os.environ), None, _unrouted, lambda _: None)
        await child.start()
        children.append(child)
        session = Session(f"s{len(children)}", "client-a", child, legacy=legacy, **options)
        child.on_message = session.deliver
        return session

    yield open_session
    for child in children:
        await child.stop(1.0)


def test_an_exchange_ends_when_its_last_request_is_answered() -> None:
    exchange = Exchange([1, "two"])
    exchange.put(b"note")  # a server message on the way: not an answer
    exchange.put(b"r1", 1, final=True)
    assert exchange.pending == {"two"}
    exchange.put(b"r2", "two", final=True)
    assert exchange.pending == set()
    items = [exchange.queue.get_nowait() for _ in range(exchange.queue.qsize())]
    assert items == [b"note", b"r1", b"r2", None]


async def test_a_request_gets_its_response_then_the_end(make: Make) -> None:
    session = await make()
    exchange = session.submit([msg(request(1, "ping"))])
    assert exchange is not None
    assert session.busy
    assert session.describe()["in_flight"] == 1
    assert await drain(exchange.queue) == [{"jsonrpc": "2.0", "id": 1, "result": {}}]
    assert not session.busy
    assert (session.messages_in, session.messages_out) == (1, 1)
    described = session.describe()
    assert described["in_flight"] == 0
    assert described["state"] == "active"
    assert described["upstream_alive"] is True
    assert described["upstream_pid"] == session.child.pid  # type: ignore[union-attr]


async def test_notifications_and_responses_alone_open_no_exchange(make: Make) -> None:
    session = await make()
    before = session.last_activity
    await asyncio.sleep(0.01)  # the activity clock must move
    notification = msg({"jsonrpc": "2.0", "method": "notifications/initialized"})
    response = msg({"jsonrpc": "2.0", "id": "srv-9", "result": {}})
    assert session.submit([notification, response]) is None
    assert session.messages_in == 2
    assert session.last_activity > before
    assert not session.busy


async def test_a_batch_is_one_exchange_until_every_answer_came(make: Make) -> None:
    session = await make()
    exchange = session.submit([msg(request(1, "slow", seconds=0.2)), msg(request(2, "ping"))])
    assert exchange is not None
    assert exchange.pending == {1, 2}
    answers = await drain(exchange.queue)
    assert [a["id"] for a in answers] == [2, 1]  # as they came: the quick one first
    assert answers[1]["result"] == "done"


async def test_server_messages_go_to_the_oldest_open_exchange(make: Make) -> None:
    session = await make()
    older = session.submit([msg(request("a", "slow", seconds=0.3))])
    newer = session.submit([msg(request("b", "notify", text="hello"))])
    assert older is not None
    assert newer is not None
    assert [m["id"] for m in await drain(newer.queue)] == ["b"]  # only its own answer
    got = await drain(older.queue)
    assert got[0]["method"] == "notifications/message"
    assert got[0]["params"] == {"data": "hello"}
    assert got[1] == {"jsonrpc": "2.0", "id": "a", "result": "done"}


async def test_without_an_exchange_server_messages_wait_for_the_stream(make: Make) -> None:
    session = await make()
    exchange = session.submit([msg(request(1, "later", text="early", delay=0.05))])
    assert exchange is not None
    assert await drain(exchange.queue) == [{"jsonrpc": "2.0", "id": 1, "result": "scheduled"}]
    await until(lambda: session.messages_out == 2, timeout=5)  # it came, nobody listens yet
    assert session.describe()["stream_open"] is False
    stream = session.open_stream()
    assert session.describe()["stream_open"] is True
    assert orjson.loads(stream.get_nowait())["params"] == {"data": "early"}  # the backlog
    exchange = session.submit([msg(request(2, "later", text="live", delay=0.05))])
    assert exchange is not None
    await drain(exchange.queue)
    live = await asyncio.wait_for(stream.get(), 5)
    assert live is not None
    assert orjson.loads(live)["params"] == {"data": "live"}
    session.close_stream(asyncio.Queue())  # not the open one: nothing happens
    assert session.stream is stream
    session.close_stream(stream)
    assert session.stream is None


async def test_a_server_request_and_the_clients_answer_to_it(make: Make) -> None:
    session = await make()
    exchange = session.submit([msg(request(1, "ask"))])
    assert exchange is not None
    asked, answered = await drain(exchange.queue)
    assert asked == {"jsonrpc": "2.0", "id": "srv-1", "method": "roots/list"}
    assert answered["id"] == 1
    stream = session.open_stream()
    reply = {"jsonrpc": "2.0", "id": "srv-1", "result": {"roots": []}}
    assert session.submit([msg(reply)]) is None  # a response: nothing to wait for
    echoed = await asyncio.wait_for(stream.get(), 5)
    assert echoed is not None
    assert orjson.loads(echoed) == {
        "jsonrpc": "2.0",
        "method": "notifications/answered",
        "params": reply,
    }


async def test_a_legacy_session_sends_everything_to_its_stream(make: Make) -> None:
    session = await make(legacy=True)
    stream = session.open_stream()
    assert session.submit([msg(request(1, "notify", text="x"))]) is None
    first = await asyncio.wait_for(stream.get(), 5)
    second = await asyncio.wait_for(stream.get(), 5)
    assert first is not None
    assert second is not None
    assert orjson.loads(first)["method"] == "notifications/message"
    assert orjson.loads(second) == {"jsonrpc": "2.0", "id": 1, "result": {"text": "x"}}
    assert not session.busy


async def test_ending_a_session_answers_every_waiting_request(make: Make) -> None:
    session = await make()
    stream = session.open_stream()
    waiting = session.submit([msg(request(7, "silent")), msg(request(8, "silent"))])
    assert waiting is not None
    pid = session.child.pid  # type: ignore[union-attr]
    session.end(SessionState.DEAD, "the upstream went away")
    errors = await drain(waiting.queue)
    assert sorted(e["id"] for e in errors) == [7, 8]
    for error in errors:
        assert error["error"] == {
            "code": -32000,
            "message": "the upstream went away",
            "data": {"session": session.id, "pid": str(pid)},
        }
    assert await asyncio.wait_for(stream.get(), 1) is None  # the GET stream ends too
    assert session.state is SessionState.DEAD
    assert session.ended_reason == "the upstream went away"
    assert session.ended_at is not None
    assert not session.busy
    session.end(SessionState.CLOSED, "later reason")  # the first end stands
    assert session.state is SessionState.DEAD
    assert session.describe()["ended_reason"] == "the upstream went away"


async def test_a_request_to_a_dead_child_is_answered_with_how_it_died(make: Make) -> None:
    session = await make()
    child = session.child
    assert child is not None
    assert session.submit([msg({"jsonrpc": "2.0", "method": "x"})]) is None
    gone = session.submit([msg(request(1, "exit", code=4, stderr="out of memory"))])
    assert gone is not None
    await until(lambda: not child.alive, timeout=5)
    assert session.describe()["upstream_alive"] is False
    exchange = session.submit([msg(request(2, "ping"))])
    assert exchange is not None
    [error] = await drain(exchange.queue)
    assert error["id"] == 2
    assert error["error"]["message"] == (
        f"the MCP server (pid {child.pid}) exited with code 4; last stderr: out of memory"
    )
    assert session.messages_in == 2  # the refused request was not counted as sent


async def test_a_forgotten_exchange_drops_its_late_answer(make: Make) -> None:
    session = await make()
    exchange = session.submit([msg(request(1, "slow", seconds=0.1))])
    assert exchange is not None
    session.forget(exchange)  # its POST went away
    assert not session.busy
    await until(lambda: session.messages_out == 1, timeout=5)
    assert exchange.queue.empty()
    assert session.open_stream().empty()  # not rerouted to the stream either


def test_a_session_without_upstream_describes_itself() -> None:
    session = Session("s0", "client-b", None)
    described = session.describe()
    assert described["id"] == "s0"
    assert described["client"] == "client-b"
    assert described["upstream"] is None
    assert described["upstream_pid"] is None
    assert described["upstream_alive"] is False
    assert described["messages_in"] == 0
    assert described["age_seconds"] >= 0
    assert described["idle_seconds"] >= 0
    session.end(SessionState.CLOSED, "closed early")
    assert session.describe()["state"] == "closed"


# -- a request bounded in time ------------------------------------------------------------------


def pid_of(session: Session) -> int:
    assert session.child is not None
    assert session.child.pid is not None
    return session.child.pid


async def _heard(session: Session, ident: int) -> list[Any]:
    """The notifications the mirror server received (asked without a time bound)."""
    session.request_timeout = None
    exchange = session.submit([msg(request(ident, "heard"))])
    if exchange is None:  # legacy: the answer comes on the stream
        assert session.stream is not None
        answer = orjson.loads(await asyncio.wait_for(session.stream.get(), 5) or b"null")
    else:
        [answer] = await drain(exchange.queue)
    return answer["result"]["notifications"]  # type: ignore[no-any-return]


@pytest.mark.parametrize("legacy", [False, True], ids=["streamable-http", "sse"])
async def test_a_request_unanswered_in_time_gets_an_error_and_is_cancelled(
    make: Make, legacy: bool
) -> None:
    session = await make(legacy=legacy, request_timeout=0.2, route="/tools")
    stream = session.open_stream()
    exchange = session.submit([msg(request(5, "silent")), msg(request(6, "slow", seconds=1.0))])
    assert session.describe()["in_flight"] == 2
    if legacy:
        assert exchange is None
        errors = [orjson.loads(await asyncio.wait_for(stream.get(), 5) or b"") for _ in range(2)]
    else:
        assert exchange is not None
        errors = await drain(exchange.queue)
    pid = str(pid_of(session))
    assert sorted(errors, key=lambda e: e["id"]) == [
        {
            "jsonrpc": "2.0",
            "id": ident,
            "error": {
                "code": REQUEST_TIMEOUT,
                "message": f"the MCP server of route /tools did not answer request {ident} "
                "within 0.2 s (request_timeout); the request is cancelled",
                "data": {"session": session.id, "pid": pid},
            },
        }
        for ident in (5, 6)
    ]
    assert session.describe()["in_flight"] == 0
    assert not session.busy
    assert session.state is SessionState.ACTIVE  # the session goes on
    await until(lambda: session.messages_out == 1, timeout=5)  # the late answer to 6 came…
    assert stream.empty()  # …and went nowhere
    cancelled = [n for n in await _heard(session, 7) if n["method"] == "notifications/cancelled"]
    assert sorted(n["params"]["requestId"] for n in cancelled) == [5, 6]
    assert cancelled[0]["params"]["reason"].startswith("no answer within 0.2 s")


async def test_an_answer_in_time_cancels_nothing(make: Make) -> None:
    session = await make(request_timeout=30)
    exchange = session.submit([msg(request(1, "ping"))])
    assert exchange is not None
    assert await drain(exchange.queue) == [{"jsonrpc": "2.0", "id": 1, "result": {}}]
    assert await _heard(session, 2) == []


# -- the legacy transport's waiting requests ------------------------------------------------------


async def test_a_legacy_sessions_waiting_requests_are_in_flight_and_answered_when_it_ends(
    make: Make,
) -> None:
    session = await make(legacy=True)
    stream = session.open_stream()
    assert session.submit([msg(request(7, "silent")), msg(request(8, "silent"))]) is None
    assert session.describe()["in_flight"] == 2
    assert session.busy  # not idle: it waits for answers
    session.end(SessionState.DEAD, "the upstream went away")
    errors = await drain(stream)  # the errors first, then the end of the stream
    data = {"session": session.id, "pid": str(pid_of(session))}
    assert sorted(errors, key=lambda e: e["id"]) == [
        {
            "jsonrpc": "2.0",
            "id": ident,
            "error": {"code": -32000, "message": "the upstream went away", "data": data},
        }
        for ident in (7, 8)
    ]
    assert session.describe()["in_flight"] == 0
    assert not session.busy


async def test_a_legacy_request_to_a_dead_child_is_answered_on_the_stream(make: Make) -> None:
    session = await make(legacy=True)
    stream = session.open_stream()
    child = session.child
    assert child is not None
    session.submit([msg(request(1, "exit", code=4))])
    await until(lambda: not child.alive, timeout=5)
    assert session.submit([msg(request(2, "ping"))]) is None
    error = orjson.loads(await asyncio.wait_for(stream.get(), 5) or b"")
    assert error["id"] == 2
    assert error["error"]["message"] == f"the MCP server (pid {child.pid}) exited with code 4"
    assert session.describe()["in_flight"] == 1  # 1 is answered only when the session ends
