"""Listening sockets and descriptor limits, shared by the gateway, the mocks and the CLI."""

from __future__ import annotations

import contextlib
import errno
import resource
import socket

from proxyfleet.errors import ListenError

__all__ = ["bind", "raise_fd_limit"]


#: Descriptors a serving process asks for: a proxied stream holds two (client and upstream).
WANTED_FDS = 65536


def raise_fd_limit(wanted: int = WANTED_FDS) -> int:
    """Lift the open-files limit: to ``wanted`` where the process may raise the hard limit
    too (root), else the soft limit to the hard one. Returns the soft limit now."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < wanted:
        with contextlib.suppress(ValueError, OSError):  # not allowed: keep the hard limit
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, wanted))
            return wanted
    if soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            return hard
    return soft


def bind(host: str, port: int, what: str = "gateway") -> socket.socket:
    """A listening socket (never inherited by child processes), or a ListenError that says
    what is wrong and what to do."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        sock = socket.create_server((host, port), family=family, backlog=4096)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise ListenError(
                f"{what}: port {port} on {host} is already in use by another process; "
                "stop it or choose another port with --port"
            ) from exc
        if exc.errno == errno.EACCES:
            raise ListenError(f"{what}: not allowed to listen on {host}:{port}") from exc
        raise ListenError(f"{what}: cannot listen on {host}:{port}: {exc.strerror}") from exc
    # Not inheritable (Python's default, kept): the gateway serves it in this process, and a
    # process started under uvloop (which has no close_fds) would otherwise hold the port
    # after the gateway is gone, taking connections it never answers.
    return sock
