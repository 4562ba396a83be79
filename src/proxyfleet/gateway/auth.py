"""Client authentication: the gateway's own keys (``server.auth_keys_file``), kept as digests.

With no keys file every client is let in and its own credentials go upstream as they are; with
one, a client must present a key (``Authorization: Bearer`` or ``X-API-Key``) and whatever it
presented never goes upstream.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from proxyfleet._asgi import Scope
from proxyfleet.errors import ConfigError, Unauthorized
from proxyfleet.gateway.rules import client_credential

__all__ = ["ClientAuth", "load_keys"]


def _digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def load_keys(path: Path) -> frozenset[str]:
    """Client keys, one per line (``#`` comments), kept only as SHA-256 digests."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError("server.auth_keys_file", str(path), f"cannot read: {exc}") from exc
    keys = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    if not keys:
        raise ConfigError("server.auth_keys_file", str(path), "holds no key")
    return frozenset(_digest(k) for k in keys)


class ClientAuth:
    """Who may use the gateway; ``ClientAuth(None)`` lets everyone in."""

    def __init__(self, keys: frozenset[str] | None) -> None:
        self._keys = keys

    @classmethod
    def from_file(cls, path: Path | None) -> ClientAuth:
        return cls(None if path is None else load_keys(path))

    @property
    def enabled(self) -> bool:
        """Client auth is on: the client's own credentials are never forwarded."""
        return self._keys is not None

    def authorize(self, scope: Scope) -> None:
        if self._keys is None:
            return
        key = client_credential(scope["headers"])
        if key is None:
            raise Unauthorized("missing API key: send 'Authorization: Bearer <key>' or X-API-Key")
        if _digest(key) not in self._keys:
            raise Unauthorized("invalid API key")

    def is_key(self, value: str) -> bool:
        """Is ``value`` one of the gateway's client keys?"""
        return self._keys is not None and _digest(value) in self._keys

    def identity(self, scope: Scope) -> str:
        """Who a client is, for per-client limits: its key (as a short digest) when client auth
        is on, else its address."""
        key = client_credential(scope["headers"]) if self._keys is not None else None
        if key is not None:
            return "key-" + _digest(key)[:12]
        peer = scope.get("client")
        return str(peer[0]) if peer else "unknown"
