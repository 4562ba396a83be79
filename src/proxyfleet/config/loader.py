"""Load the one :class:`Config` from YAML, ``PROXYFLEET_*`` environment variables and CLI flags.

Precedence, lowest first: defaults → YAML file → environment → CLI flags. Nested fields are
reached with ``__`` in environment names (``PROXYFLEET_POOL__SELECTION=round-robin``) and with
dotted paths in flag overrides (``pool.selection``). Values from the environment are parsed as
YAML scalars or flow collections (``PROXYFLEET_POOL__UPSTREAMS='[http://a, http://b]'``).

Every problem becomes a :class:`~proxyfleet.errors.ConfigError` naming the source (file,
variable or flag), the dotted field and the reason.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from proxyfleet.config.model import Config
from proxyfleet.errors import ConfigError
from proxyfleet.logs import looks_secret

__all__ = ["ENV_PREFIX", "RESERVED_ENV", "load_config"]

ENV_PREFIX = "PROXYFLEET_"
#: Environment variables of ours that are not config fields.
RESERVED_ENV = frozenset({"CONFIG", "RUNTIME_DIR"})
#: Fields whose values are never echoed in an error message.
#: Fields whose values are secrets wherever they are (inline keys, header values, a child's
#: environment): an error names the field, never what was in it.
_SECRET_FIELDS = frozenset({"api_key", "headers", "env", "password", "token"})


@dataclass
class _Layers:
    data: dict[str, Any] = field(default_factory=dict)
    sources: dict[tuple[str, ...], str] = field(default_factory=dict)

    def put(self, path: tuple[str, ...], value: object, source: str) -> None:
        node = self.data
        for i, key in enumerate(path[:-1]):
            child = node.setdefault(key, {})
            if not isinstance(child, dict):
                raise ConfigError(source, ".".join(path[: i + 1]), "is not a section")
            node = child
        node[path[-1]] = value
        self.sources[path] = source

    def source_of(self, loc: tuple[str, ...], default: str) -> str:
        for n in range(len(loc), 0, -1):
            if loc[:n] in self.sources:
                return self.sources[loc[:n]]
        return default


def read_yaml(path: Path) -> dict[str, Any]:
    """Read a YAML mapping, translating every failure into a ConfigError naming the file."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(str(path), "", f"cannot read file: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(str(path), "", f"not UTF-8 text: {exc}") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(str(path), where, f"invalid YAML: {problem}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(str(path), "", f"top level must be a mapping, got {type(data).__name__}")
    return data


#: Debug mode's conventional variables, also understood (PROXYFLEET_DEBUG__* win over them).
_ALIASES: dict[str, tuple[str, ...]] = {
    "DEBUG_MODE": ("debug", "enabled"),
    "DEBUG_LOG_DIR": ("debug", "dir"),
}


def _env_value(raw: str) -> object:
    """A variable's value parsed as YAML (``true``, ``[a, b]``), else the text as it is."""
    try:
        return yaml.safe_load(raw) if raw else raw
    except yaml.YAMLError:
        return raw


def _env_layer(layers: _Layers, env: Mapping[str, str]) -> None:
    for alias, path in _ALIASES.items():
        if env.get(alias):
            layers.put(path, _env_value(env[alias]), f"environment variable {alias}")
    for name in sorted(env):
        if not name.startswith(ENV_PREFIX):
            continue
        rest = name[len(ENV_PREFIX) :]
        if rest in RESERVED_ENV or not rest:
            continue
        path = tuple(part.lower() for part in rest.split("__"))
        if any(not part for part in path):
            raise ConfigError(name, "", "empty path segment in variable name")
        layers.put(path, _env_value(env[name]), f"environment variable {name}")


def _format_loc(loc: tuple[str | int, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out


def load_config(
    path: Path | None = None,
    *,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, tuple[object, str]] | None = None,
) -> Config:
    """Build the config. ``overrides`` maps a dotted field to ``(value, flag name)``."""
    layers = _Layers()
    file_source = str(path) if path is not None else "<defaults>"
    if path is not None:
        layers.data = read_yaml(path)
    _env_layer(layers, env or {})
    for dotted, (value, flag) in (overrides or {}).items():
        layers.put(tuple(dotted.split(".")), value, flag)
    try:
        config = Config.model_validate(layers.data)
    except ValidationError as exc:
        errors = exc.errors()
        first = errors[0]
        loc = tuple(str(p) for p in first["loc"])
        reason = "unknown key" if first["type"] == "extra_forbidden" else first["msg"]
        reason = reason.removeprefix("Value error, ")
        if first["type"] != "extra_forbidden" and "input" in first:
            shown = first["input"]
            secret = any(str(p) in _SECRET_FIELDS for p in first["loc"]) or looks_secret(shown)
            if not secret and not isinstance(shown, dict | list):
                reason += f" (got {shown!r})"
        if len(errors) > 1:
            reason += f" (and {len(errors) - 1} more error(s))"
        raise ConfigError(
            layers.source_of(loc, file_source), _format_loc(tuple(first["loc"])), reason
        ) from exc
    _check_mcp_commands(config, env, layers, file_source)
    if path is None:
        return config
    in_file = {
        name: layers.source_of(loc, file_source) == file_source
        for name, loc in (
            ("creds", ("pool", "credentials_dir")),
            ("keys", ("server", "auth_keys_file")),
        )
    }
    return _resolve_paths(
        config, path.parent, rebase_creds=in_file["creds"], rebase_keys=in_file["keys"]
    )


def _check_mcp_commands(
    config: Config, env: Mapping[str, str] | None, layers: _Layers, file_source: str
) -> None:
    """An MCP server that cannot run is refused at load, not at a client's first session:
    a command with a ``/`` must be an executable file (relative to the route's ``cwd``, as
    its children see it); a bare name must be on the PATH its children get (the route's own
    ``env`` PATH, else the environment's; without an environment it cannot be checked)."""
    for n, route in enumerate(config.mcp):
        upstream = route.upstream
        if not upstream.command:
            continue
        own = upstream.env.get("PATH")
        search = own.get_secret_value() if own is not None else (env or {}).get("PATH")
        if own is None and env is None:
            search = None
        problem = _command_problem(upstream.command[0], upstream.cwd, search)
        if problem is not None:
            source = layers.source_of(("mcp",), file_source)
            raise ConfigError(source, f"mcp[{n}].upstream.command", problem)


def _command_problem(program: str, cwd: Path | None, search: str | None) -> str | None:
    if "/" in program:
        where = Path(program)
        if cwd is not None and not where.is_absolute():
            where = cwd / where
        if not where.exists():
            return f"{program!r} does not exist"
        if where.is_dir():
            return f"{program!r} is a directory, not a program"
        if not os.access(where, os.X_OK):
            return f"{program!r} is not executable"
        return None
    if search is not None and shutil.which(program, path=search) is None:
        return f"{program!r} is not found on PATH ({search})"
    return None


def _resolve_paths(config: Config, base: Path, *, rebase_creds: bool, rebase_keys: bool) -> Config:
    """Paths written in a config file are relative to that file, as users expect."""
    pool, server = config.pool, config.server
    creds, keys = pool.credentials_dir, server.auth_keys_file
    if rebase_creds and creds is not None and not creds.is_absolute():
        pool = pool.model_copy(update={"credentials_dir": base / creds})
    if rebase_keys and keys is not None and not keys.is_absolute():
        server = server.model_copy(update={"auth_keys_file": base / keys})
    return config.model_copy(update={"pool": pool, "server": server})
