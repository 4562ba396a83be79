"""What a backend is: an immutable spec (which kind, where, with which credentials, how many at
once), and the secret-free part of it that a shared store may hold (:class:`Member`).

A spec's credentials are resolved by each process from its own config and never leave it: a
store holds members (ids, caps, public URLs), a process turns a member back into its spec.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from urllib.parse import urlsplit, urlunsplit

__all__ = ["BackendSpec", "BackendState", "Cookie", "Member", "cookie_header", "public_url"]


class BackendState(enum.StrEnum):
    """What a backend is doing, as admin output, metrics and readiness see it."""

    IDLE = "idle"
    BUSY = "busy"
    UNHEALTHY = "unhealthy"  # quarantined
    HALF_OPEN = "half_open"  # one trial lease decides whether it returns
    DRAINING = "draining"  # keeps its leases, takes no new one

    @property
    def usable(self) -> bool:
        """Could it serve a request (now, or once its current leases end)?"""
        return self in _USABLE


_USABLE = frozenset({BackendState.IDLE, BackendState.BUSY, BackendState.HALF_OPEN})


def public_url(url: str) -> str:
    """The URL without user-info or query string, safe to show in logs and admin output."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


@dataclass(frozen=True, slots=True)
class Cookie:
    """One cookie of a Playwright storage state (a logged-in browser session)."""

    name: str
    value: str = field(repr=False)
    domain: str
    path: str = "/"
    secure: bool = False
    expires: float = -1.0  # unix time; -1 or 0: a session cookie


def _domain_matches(host: str, domain: str) -> bool:
    domain = domain.lstrip(".").lower()
    return host == domain or host.endswith("." + domain)


def _path_matches(path: str, cookie_path: str) -> bool:
    if not cookie_path or cookie_path == "/":
        return True
    prefix = cookie_path.rstrip("/")
    return path == prefix or path.startswith(prefix + "/")


def cookie_header(cookies: tuple[Cookie, ...], url: str, now: float) -> tuple[str, float]:
    """The ``Cookie`` value for ``url`` (domain, path, secure, expiry all checked), and the
    unix time until which it stays right (the first expiry among the cookies it holds)."""
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    path = parts.path or "/"
    pairs = []
    until = float("inf")
    for cookie in cookies:
        if 0 < cookie.expires < now:
            continue
        if cookie.secure and parts.scheme != "https":
            continue
        if not _domain_matches(host, cookie.domain) or not _path_matches(path, cookie.path):
            continue
        pairs.append(f"{cookie.name}={cookie.value}")
        if cookie.expires > 0:
            until = min(until, cookie.expires)
    return "; ".join(pairs), until


@dataclass(frozen=True, slots=True)
class Member:
    """A backend as a pool store knows it: no credentials, nothing secret.

    ``url`` is the public URL (no user-info); with ``kind`` it lets a process that did not
    create a credential-free backend (an engine another process provisioned) reach it.
    ``origin`` says what brought a backend that joined at run time (``provisioned:<name>``,
    ``adopted:<name>``), so any process of a fleet may release it; empty for configured ones."""

    id: str
    max_concurrency: int = 1
    kind: str = "http"
    url: str = ""
    origin: str = ""


@dataclass(frozen=True, slots=True, repr=False)
class BackendSpec:
    """One backend of the pool. ``kind`` names the transport that reaches it (``http``,
    ``memory`` in tests); ``headers`` and ``cookies`` carry its credentials and never appear in
    ``repr`` (nor does a password in ``base_url``)."""

    id: str
    base_url: str
    headers: tuple[tuple[str, str], ...] = field(default=(), repr=False)
    max_concurrency: int = 1
    source: str = ""
    kind: str = "http"
    cookies: tuple[Cookie, ...] = field(default=(), repr=False)
    origin: str = ""  # what brought a backend that joined at run time (see Member)

    def __repr__(self) -> str:
        return (
            f"BackendSpec(id={self.id!r}, upstream={public_url(self.base_url)!r}, "
            f"kind={self.kind!r}, max_concurrency={self.max_concurrency}, source={self.source!r})"
        )

    @property
    def member(self) -> Member:
        url = public_url(self.base_url)
        return Member(self.id, self.max_concurrency, self.kind, url, self.origin)

    @classmethod
    def of_member(cls, member: Member, source: str) -> BackendSpec:
        """The spec of a credential-free backend that joined elsewhere (e.g. an engine)."""
        return cls(
            member.id, member.url, (), member.max_concurrency, source, member.kind,
            origin=member.origin,
        )  # fmt: skip

    def describe(self) -> dict[str, object]:
        """A secret-free description for admin output."""
        names = {name.lower() for name, _ in self.headers}
        if self.cookies:
            names.add("cookie")
        return {
            "id": self.id,
            "kind": self.kind,
            "upstream": public_url(self.base_url),
            "source": self.source,
            "max_concurrency": self.max_concurrency,
            "credential_headers": sorted(names),
        }
