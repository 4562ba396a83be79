"""The port guard's four states: the pure decision, and each state seen for real."""

from __future__ import annotations

import contextlib
import os
import socket
import threading
from dataclasses import replace
from pathlib import Path

import pytest

from proxyfleet.fleet.portguard import (
    Facts,
    PortState,
    answers_health,
    classify,
    connect,
    free_port,
    http_get,
    inspect,
    is_ready,
    port_owner,
)
from proxyfleet.fleet.records import (
    InstanceFiles,
    new_record,
    process_start_ticks,
    read_record,
    write_record,
)


@pytest.mark.parametrize(
    ("facts", "state"),
    [
        (Facts(True, False, False), PortState.FREE),
        (Facts(True, False, True), PortState.FREE),  # a stale record does not make a port busy
        (Facts(False, True, True), PortState.OURS),
        (Facts(False, True, False), PortState.FOREIGN),  # a proxyfleet we did not record
        (Facts(False, False, True), PortState.FOREIGN),  # our pid, but not answering there
        (Facts(False, False, False), PortState.FOREIGN),
        (Facts(None, False, False), PortState.UNKNOWN),
    ],
)
def test_classify(facts: Facts, state: PortState) -> None:
    assert classify(facts) is state


def test_free_and_foreign_for_real() -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        port = holder.getsockname()[1]
        holder.listen()
        assert inspect("127.0.0.1", port, record_alive_and_ours=False) is PortState.FOREIGN
        owner = port_owner(port)
        assert owner is not None
        assert f"(pid {os.getpid()})" in owner
    assert inspect("127.0.0.1", port, record_alive_and_ours=False) is PortState.FREE


def test_free_port_is_one_nobody_listens_on() -> None:
    port = free_port("127.0.0.1")
    assert port is not None
    assert port > 0
    assert inspect("127.0.0.1", port, record_alive_and_ours=False) is PortState.FREE
    v6 = free_port("::1")
    assert v6 is None or v6 > 0  # None only where the machine has no IPv6 loopback
    assert free_port("192.0.2.1") is None  # not an address of this machine


def test_unknown_when_binding_is_not_allowed() -> None:
    # 192.0.2.1 (TEST-NET-1) is not an address of this machine: bind fails with EADDRNOTAVAIL
    assert inspect("192.0.2.1", 8080, record_alive_and_ours=False) is PortState.UNKNOWN


def test_records_round_trip_and_know_their_process(tmp_path: Path) -> None:
    files = InstanceFiles(tmp_path / "rt", 4321)
    record = new_record(4321, "127.0.0.1", None, files.log, ("--upstream", "http://x/v1"))
    write_record(files, record)
    assert read_record(files) == record
    assert record.alive_and_ours()
    assert list(files.directory.iterdir()) == [files.pid]  # no temp file left behind
    reused = replace(record, start_ticks=record.start_ticks + 1)
    assert not reused.alive_and_ours()  # same pid, other start time: not ours
    files.pid.write_text("{torn")
    assert read_record(files) is None
    assert process_start_ticks(2**22 + 7) is None


def _echo_server() -> tuple[socket.socket, threading.Thread]:
    """A listener that sends back what it reads: what a health check meets when its
    connection to a port nobody listens on met itself (TCP simultaneous open)."""
    server = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        with contextlib.suppress(OSError):
            while True:
                conn, _ = server.accept()
                with conn:
                    conn.settimeout(2)
                    with contextlib.suppress(OSError):
                        conn.sendall(conn.recv(65536))

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return server, thread


def test_a_port_that_answers_with_something_other_than_http_is_not_a_proxyfleet() -> None:
    server, _ = _echo_server()
    port = server.getsockname()[1]
    try:
        assert answers_health("127.0.0.1", port) is None
        assert not is_ready("127.0.0.1", port)
        assert http_get("127.0.0.1", port, "/ready", 1.0) is None
        assert inspect("127.0.0.1", port, True) is PortState.FOREIGN
    finally:
        server.close()


def test_http_get_of_a_port_nobody_listens_on_is_none() -> None:
    port = free_port("127.0.0.1")
    assert port is not None
    assert http_get("127.0.0.1", port, "/health", 1.0) is None
    assert connect("127.0.0.1", port, 1.0) is None
