"""Turn the configured credentials directory, inline backends and upstream URLs into backends.

A credentials directory holds one backend per file, the id being the file stem:

- ``NAME.key``: an API key, sent as ``Authorization: Bearer <key>``;
- ``NAME.json`` as a Playwright storage state (``{"cookies": [...], "origins": [...]}``): the
  backend keeps the cookies; its transport sends those that match the upstream's host and path
  (and have not expired) as ``Cookie``;
- ``NAME.json`` as ``{"headers": {...}, "upstream": "optional per-backend base URL",
  "max_concurrency": N}``.

Hidden files are skipped; anything else is refused, so that a misnamed key is never ignored.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from proxyfleet.config.model import Config
from proxyfleet.errors import ConfigError
from proxyfleet.pool.backend import BackendSpec, Cookie, cookie_header, public_url

__all__ = ["load_credentials_dir", "resolve_backends"]

_JSON_KEYS = frozenset({"headers", "upstream", "max_concurrency"})


def _need_upstream(file: Path, default: str | None) -> str:
    if default is None:
        raise ConfigError(
            str(file),
            "upstream",
            "no upstream for this credential: set upstream.base_url, "
            'pass one --upstream, or put "upstream" in the file',
        )
    return default


def _cookie(raw: object) -> Cookie | None:
    if not isinstance(raw, dict) or not {"name", "value", "domain"} <= raw.keys():
        return None
    expires = raw.get("expires", -1)
    if not isinstance(expires, int | float) or isinstance(expires, bool):
        return None
    return Cookie(
        str(raw["name"]),
        str(raw["value"]),
        str(raw["domain"]),
        str(raw.get("path") or "/"),
        bool(raw.get("secure", False)),
        float(expires),
    )


def _storage_state(file: Path, data: dict[str, Any], upstream: str, cap: int) -> BackendSpec:
    raw = data.get("cookies", [])
    cookies = [_cookie(c) for c in raw] if isinstance(raw, list) else [None]
    if None in cookies:
        raise ConfigError(str(file), "cookies", "must be a list of {name, value, domain, …}")
    state = tuple(c for c in cookies if c is not None)
    if not cookie_header(state, upstream, time.time())[0]:
        raise ConfigError(
            str(file), "cookies", f"no unexpired cookie matches the upstream {public_url(upstream)}"
        )
    return BackendSpec(file.stem, upstream, (), cap, str(file), cookies=state)


def _header_file(file: Path, data: dict[str, Any], default: str | None, cap: int) -> BackendSpec:
    unknown = sorted(set(data) - _JSON_KEYS)
    if unknown:
        raise ConfigError(str(file), unknown[0], "unknown key (expected headers, upstream, …)")
    headers = data.get("headers", {})
    if not isinstance(headers, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in headers.items()
    ):
        raise ConfigError(str(file), "headers", "must map header names to string values")
    upstream = data.get("upstream", default)
    if upstream is not None and (
        not isinstance(upstream, str) or not upstream.startswith(("http://", "https://"))
    ):
        raise ConfigError(str(file), "upstream", "must be an http:// or https:// URL")
    own_cap = data.get("max_concurrency", cap)
    if not isinstance(own_cap, int) or isinstance(own_cap, bool) or own_cap < 1:
        raise ConfigError(str(file), "max_concurrency", "must be a positive integer")
    base = _need_upstream(file, upstream).rstrip("/")
    return BackendSpec(file.stem, base, tuple(headers.items()), own_cap, str(file))


def _load_file(file: Path, default: str | None, cap: int) -> BackendSpec:
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(str(file), "", f"cannot read credential: {exc}") from exc
    if file.suffix == ".key":
        key = text.strip()
        if not key or any(ch.isspace() for ch in key):
            raise ConfigError(str(file), "", "a .key file must hold exactly one API key")
        return BackendSpec(
            file.stem,
            _need_upstream(file, default),
            (("Authorization", f"Bearer {key}"),),
            cap,
            str(file),
        )
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(str(file), f"line {exc.lineno}", f"invalid JSON: {exc.msg}") from exc
    if not isinstance(data, dict):
        raise ConfigError(str(file), "", "must hold a JSON object")
    if "cookies" in data or "origins" in data:
        return _storage_state(file, data, _need_upstream(file, default), cap)
    if "headers" in data:
        return _header_file(file, data, default, cap)
    raise ConfigError(
        str(file), "", 'neither a Playwright storage state ({"cookies": …}) nor {"headers": …}'
    )


def load_credentials_dir(directory: Path, default: str | None, cap: int) -> list[BackendSpec]:
    """One backend per ``*.key`` / ``*.json`` file, sorted by name."""
    source = "pool.credentials_dir"
    if not directory.exists():
        raise ConfigError(source, str(directory), "directory does not exist")
    if not directory.is_dir():
        raise ConfigError(source, str(directory), "is not a directory")
    try:
        files = sorted(p for p in directory.iterdir() if not p.name.startswith("."))
    except OSError as exc:
        raise ConfigError(source, str(directory), f"cannot list: {exc.strerror}") from exc
    if not files:
        raise ConfigError(source, str(directory), "is empty: add NAME.key or NAME.json files")
    specs = []
    for file in files:
        if file.suffix not in (".key", ".json") or not file.is_file():
            raise ConfigError(
                str(file), "", "not a credential file (expected NAME.key or NAME.json)"
            )
        specs.append(_load_file(file, default, cap))
    return specs


_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")


def _check_headers(spec: BackendSpec) -> None:
    """Header names must be tokens and values (cookies too) free of control characters (no
    injection)."""
    cookies = [("Cookie", f"{c.name}={c.value}") for c in spec.cookies]
    for name, value in (*spec.headers, *cookies):
        if not _TOKEN.match(name):
            raise ConfigError(spec.source, f"headers.{name!r}", "not a valid header name")
        if any((ord(ch) < 0x20 and ch != "\t") or ord(ch) == 0x7F for ch in value):
            raise ConfigError(spec.source, f"headers.{name}", "value holds control characters")
        try:
            value.encode("latin-1")
        except UnicodeEncodeError as exc:
            raise ConfigError(spec.source, f"headers.{name}", "value is not Latin-1") from exc


def _upstream_id(url: str, taken: set[str]) -> str:
    parts = urlsplit(url)
    base = f"{parts.hostname}:{parts.port or (443 if parts.scheme == 'https' else 80)}"
    name, n = base, 1
    while name in taken:
        n += 1
        name = f"{base}#{n}"
    return name


def resolve_backends(config: Config) -> tuple[BackendSpec, ...]:
    """Every backend of the pool, checked for duplicates; refuses an empty pool."""
    pool = config.pool
    default = config.upstream.base_url
    has_credentials = pool.credentials_dir is not None or bool(pool.backends)
    keyless = list(pool.upstreams)
    if has_credentials and default is None and keyless:
        if len(keyless) > 1:
            raise ConfigError(
                "pool.upstreams",
                "",
                "with credentials, give one upstream (the base URL the "
                "credentials are for) or set upstream.base_url",
            )
        default, keyless = keyless[0], []
    specs: list[BackendSpec] = []
    if pool.credentials_dir is not None:
        specs += load_credentials_dir(pool.credentials_dir, default, pool.max_concurrency)
    for i, inline in enumerate(pool.backends):
        headers = {k: v.get_secret_value() for k, v in inline.headers.items()}
        if inline.api_key is not None:
            headers["Authorization"] = f"Bearer {inline.api_key.get_secret_value()}"
        where = f"pool.backends[{i}]"
        upstream = inline.upstream or _need_upstream(Path(where), default)
        cap = inline.max_concurrency or pool.max_concurrency
        specs.append(BackendSpec(inline.id, upstream, tuple(headers.items()), cap, where))
    taken = {s.id for s in specs}
    for url in keyless:
        name = _upstream_id(url, taken)
        taken.add(name)
        specs.append(BackendSpec(name, url, (), pool.max_concurrency, "pool.upstreams"))
    seen: dict[str, str] = {}
    for spec in specs:
        _check_headers(spec)
        if spec.id in seen:
            raise ConfigError(
                spec.source, "id", f"duplicate backend id {spec.id!r} (also in {seen[spec.id]})"
            )
        seen[spec.id] = spec.source
    if not specs and pool.provisioner is None and not config.mcp:
        raise ConfigError(
            "pool",
            "",
            "no backends: give --credentials-dir, --upstream URL, pool.backends "
            "or pool.provisioner",
        )
    return tuple(specs)
