"""What a backend is: an immutable spec (where, with which credentials, how many at once)."""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import urlsplit, urlunsplit

__all__ = ["BackendSpec", "public_url"]


def public_url(url: str) -> str:
    """The URL without user-info or query string, safe to show in logs and admin output."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


@dataclass(frozen=True, slots=True)
class BackendSpec:
    """One backend of the pool. ``headers`` carry its credentials and never appear in ``repr``."""

    id: str
    base_url: str
    headers: tuple[tuple[str, str], ...] = field(default=(), repr=False)
    max_concurrency: int = 1
    source: str = ""

    def describe(self) -> dict[str, object]:
        """A secret-free description for admin output."""
        return {
            "id": self.id,
            "upstream": public_url(self.base_url),
            "source": self.source,
            "max_concurrency": self.max_concurrency,
            "credential_headers": sorted({name.lower() for name, _ in self.headers}),
        }
