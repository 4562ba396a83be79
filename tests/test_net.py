"""Listening sockets and the descriptor limit, for real: a busy port, port 0, IPv6 loopback,
an address that is not ours, and the soft open-files limit lifted in a child process."""

from __future__ import annotations

import contextlib
import os
import resource
import socket
import subprocess
import sys
from collections.abc import Iterator

import pytest

from proxyfleet._net import bind
from proxyfleet.errors import ListenError
from tests.conftest import cli_env


def _has_ipv6_loopback() -> bool:
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


@contextlib.contextmanager
def bound(host: str, port: int, what: str = "gateway") -> Iterator[socket.socket]:
    sock = bind(host, port, what)
    try:
        yield sock
    finally:
        sock.close()


def _talks(host: str, port: int, family: socket.AddressFamily) -> None:
    """A client connects and the listening socket accepts it."""
    with socket.socket(family) as client:
        client.settimeout(5)
        client.connect((host, port))


def test_port_zero_picks_a_free_port_that_accepts() -> None:
    with bound("127.0.0.1", 0) as sock:
        host, port = sock.getsockname()
        assert host == "127.0.0.1"
        assert port > 0
        assert sock.family == socket.AF_INET
        _talks("127.0.0.1", port, socket.AF_INET)
        conn, _ = sock.accept()
        conn.close()


_OPEN_FDS = """
import os
for fd in os.listdir("/proc/self/fd"):
    try:
        print(os.readlink(f"/proc/self/fd/{fd}"))
    except FileNotFoundError:  # the directory listing's own descriptor, closed by now
        pass
"""


def test_a_listening_socket_never_crosses_into_a_child_process() -> None:
    """Not even one started by a spawner that passes on every inheritable descriptor (uvloop,
    under which the gateway starts MCP servers, has no close_fds): a process the child starts
    would hold the port after the gateway is gone."""
    with bound("127.0.0.1", 0) as sock:
        assert not sock.get_inheritable()
        seen = subprocess.run(
            [sys.executable, "-c", _OPEN_FDS],
            capture_output=True,
            text=True,
            timeout=30,
            close_fds=False,
            stdin=subprocess.DEVNULL,
            check=True,
        ).stdout
        assert f"socket:[{os.fstat(sock.fileno()).st_ino}]" not in seen


def test_two_port_zero_binds_get_different_ports() -> None:
    with bound("127.0.0.1", 0) as one, bound("127.0.0.1", 0) as two:
        assert one.getsockname()[1] != two.getsockname()[1]


def test_a_busy_port_names_the_port_and_says_what_to_do() -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        with pytest.raises(ListenError) as caught:
            bind("127.0.0.1", port, "mock")
    message = str(caught.value)
    assert message == (
        f"mock: port {port} on 127.0.0.1 is already in use by another process; "
        "stop it or choose another port with --port"
    )
    assert isinstance(caught.value.__cause__, OSError)  # translated, with the cause kept
    assert ListenError.exit_code == 1


def test_a_port_bound_by_bind_itself_is_busy_for_the_next() -> None:
    with bound("127.0.0.1", 0) as first:
        port = first.getsockname()[1]
        with pytest.raises(ListenError, match=f"gateway: port {port} on 127.0.0.1 is already"):
            bind("127.0.0.1", port)


def test_an_address_that_is_not_ours_is_a_listen_error() -> None:
    # 192.0.2.1 (TEST-NET-1) is no address of this machine: EADDRNOTAVAIL
    with pytest.raises(ListenError) as caught:
        bind("192.0.2.1", 8080)
    assert str(caught.value).startswith("gateway: cannot listen on 192.0.2.1:8080: ")
    assert "in use" not in str(caught.value)


@pytest.mark.skipif(os.geteuid() == 0, reason="root may listen on any port")
def test_a_privileged_port_says_not_allowed() -> None:
    with pytest.raises(ListenError, match=r"gateway: not allowed to listen on 127.0.0.1:1$"):
        bind("127.0.0.1", 1)


@pytest.mark.skipif(not _has_ipv6_loopback(), reason="this machine has no IPv6 loopback (::1)")
def test_ipv6_loopback() -> None:
    with bound("::1", 0) as sock:
        assert sock.family == socket.AF_INET6
        host, port = sock.getsockname()[:2]
        assert host == "::1"
        _talks("::1", port, socket.AF_INET6)
        with pytest.raises(ListenError, match=rf"port {port} on ::1 is already in use"):
            bind("::1", port)


_FD_LIMIT = """
import resource, sys
from proxyfleet._net import raise_fd_limit
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
start, wanted = int(sys.argv[1]), int(sys.argv[2])
if start < hard:
    resource.setrlimit(resource.RLIMIT_NOFILE, (start, hard))
returned = raise_fd_limit(wanted)
print(returned, *resource.getrlimit(resource.RLIMIT_NOFILE))
"""


def _fd_limit_in_child(start: int, wanted: int) -> tuple[int, int, int]:
    out = subprocess.run(
        [sys.executable, "-c", _FD_LIMIT, str(start), str(wanted)],
        capture_output=True,
        text=True,
        timeout=30,
        env=cli_env(),
        check=True,
    ).stdout.split()
    returned, soft, hard = (int(x) for x in out)
    return returned, soft, hard


def test_raise_fd_limit_lifts_the_soft_limit_to_the_hard_one() -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard <= 64:
        pytest.skip(f"the hard open-files limit is {hard}: nothing to lift")
    returned, soft, new_hard = _fd_limit_in_child(64, hard)
    assert new_hard == hard
    assert soft == hard  # lifted all the way
    assert returned == soft  # and it says what the limit now is


def test_raise_fd_limit_at_the_hard_limit_returns_it_unchanged() -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    returned, soft, _ = _fd_limit_in_child(hard, hard)
    assert returned == soft == hard


def _may_raise_hard_limits() -> bool:
    """CAP_SYS_RESOURCE (bit 24 of the effective set): root in a container may lack it."""
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("CapEff:"):
                return bool(int(line.split()[1], 16) >> 24 & 1)
    return False


def test_raise_fd_limit_raises_the_hard_limit_where_it_may() -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    returned, soft, new_hard = _fd_limit_in_child(64, hard + 1000)
    if _may_raise_hard_limits():  # a proxied stream needs two descriptors
        assert returned == soft == new_hard == hard + 1000
    else:  # without the capability the hard limit stays, the soft one lifted to it
        assert returned == soft == new_hard == hard
