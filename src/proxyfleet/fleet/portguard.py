"""Before a start: whose is the port? Free, ours, someone else's, or unknown.

:func:`classify` is the pure decision; :func:`inspect` gathers the facts (can we bind, does a
proxyfleet answer ``/health`` there, is our record's process alive and ours, who holds it).
:func:`connect` and :func:`http_get` are how the fleet asks a port anything: whatever answers
there (or nothing), they return or give None, never raise.
"""

from __future__ import annotations

import enum
import errno
import http.client
import json
import os
import socket
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "Facts",
    "PortState",
    "answers_health",
    "classify",
    "connect",
    "free_port",
    "http_get",
    "inspect",
    "is_ready",
    "port_owner",
]


class PortState(enum.Enum):
    FREE = "free"
    OURS = "ours"  # a proxyfleet instance we started answers there
    FOREIGN = "foreign"  # someone else listens there
    UNKNOWN = "unknown"  # cannot tell (no permission to bind, say)


@dataclass(frozen=True, slots=True)
class Facts:
    bindable: bool | None  # None: binding failed for another reason than "in use"
    answers_as_proxyfleet: bool
    record_alive_and_ours: bool


def classify(facts: Facts) -> PortState:
    if facts.bindable is None:
        return PortState.UNKNOWN
    if facts.bindable:
        return PortState.FREE
    if facts.record_alive_and_ours and facts.answers_as_proxyfleet:
        return PortState.OURS
    return PortState.FOREIGN


def _bindable(host: str, port: int) -> bool | None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            return False if exc.errno == errno.EADDRINUSE else None
    return True


def free_port(host: str) -> int | None:
    """A port nobody listens on at ``host`` now, as the kernel picks one for port 0; None when
    ``host`` cannot be bound at all."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, 0))
        except OSError:
            return None
        return int(sock.getsockname()[1])


def connect(host: str, port: int, timeout: float) -> socket.socket | None:
    """A TCP connection to what listens on ``host:port``, or None. A connection to a port of
    the ephemeral range where nothing listens yet can meet itself (TCP simultaneous open: the
    kernel picked that very port as its source); it is closed at once and counts as nothing
    listening, since it also holds the port the server is about to bind."""
    try:
        sock = socket.create_connection((host, port), timeout)
    except OSError:
        return None
    try:
        if sock.getsockname()[:2] == sock.getpeername()[:2]:
            sock.close()
            return None
    except OSError:
        sock.close()
        return None
    return sock


def http_get(host: str, port: int, path: str, timeout: float) -> tuple[int, bytes] | None:
    """``GET path`` on ``host:port``: the status and body, or None when nothing answers there
    in HTTP (refused, timed out, another protocol, a connection that met itself)."""
    sock = connect(host, port, timeout)
    if sock is None:
        return None
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    conn.sock = sock
    try:
        conn.request("GET", path, headers={"Connection": "close"})
        response = conn.getresponse()
        return response.status, response.read()
    except (OSError, http.client.HTTPException):
        return None
    finally:
        conn.close()


def answers_health(host: str, port: int, timeout: float = 1.0) -> dict[str, object] | None:
    got = http_get(host, port, "/health", timeout)
    if got is None:
        return None
    try:
        data = json.loads(got[1])
    except ValueError:
        return None
    return data if isinstance(data, dict) and "backends" in data else None


def is_ready(host: str, port: int, timeout: float = 0.5) -> bool:
    got = http_get(host, port, "/ready", timeout)
    return got is not None and got[0] == 200


def inspect(host: str, port: int, record_alive_and_ours: bool) -> PortState:
    bindable = _bindable(host, port)
    answers = bindable is False and answers_health(host, port) is not None
    return classify(Facts(bindable, answers, record_alive_and_ours))


def _listening_inodes(port: int) -> set[str]:
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[1].endswith(f":{port:04X}") and fields[3] == "0A":  # LISTEN
                inodes.add(fields[9])
    return inodes


def port_owner(port: int) -> str | None:
    """``name (pid N)`` of a process listening on the port, when /proc lets us see it."""
    inodes = _listening_inodes(port)
    if not inodes:
        return None
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            for fd in (entry / "fd").iterdir():
                target = os.readlink(fd)
                if target.startswith("socket:[") and target[8:-1] in inodes:
                    name = (entry / "comm").read_text().strip()
                    return f"{name} (pid {entry.name})"
        except OSError:
            continue
    return None
