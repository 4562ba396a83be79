"""Before a start: whose is the port? Free, ours, someone else's, or unknown.

:func:`classify` is the pure decision; :func:`inspect` gathers the facts (can we bind, does a
proxyfleet answer ``/health`` there, is our record's process alive and ours, who holds it).
"""

from __future__ import annotations

import enum
import errno
import json
import os
import socket
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "Facts",
    "PortState",
    "answers_health",
    "classify",
    "free_port",
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


def answers_health(host: str, port: int, timeout: float = 1.0) -> dict[str, object] | None:
    shown = f"[{host}]" if ":" in host else host
    try:
        with urllib.request.urlopen(f"http://{shown}:{port}/health", timeout=timeout) as response:
            data = json.load(response)
    except urllib.error.HTTPError as error:
        with error:
            try:
                data = json.load(error)
            except ValueError:
                return None
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and "backends" in data else None


def is_ready(host: str, port: int, timeout: float = 0.5) -> bool:
    shown = f"[{host}]" if ":" in host else host
    try:
        with urllib.request.urlopen(f"http://{shown}:{port}/ready", timeout=timeout) as response:
            return bool(response.status == 200)
    except urllib.error.HTTPError as error:
        error.close()
        return False
    except OSError:
        return False


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
