"""Provisioners: where an elastic pool's new backends come from.

:class:`HttpProvisioner` speaks the orchestrator API (bearer key, configurable paths);
:class:`CommandProvisioner` runs a local command that prints the new backend as JSON. Both turn
every failure into :class:`~proxyfleet.errors.ProvisionerError`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
from typing import Any, Protocol
from urllib.parse import quote, urlsplit

import aiohttp

from proxyfleet.config.model import ProvisionerConfig
from proxyfleet.errors import ProvisionerError
from proxyfleet.orchestrator.api import (
    Engine,
    OrchestratorStatus,
    parse_command_output,
    parse_engines,
    parse_provisioned,
    parse_refusal,
    parse_status,
)

__all__ = ["CommandProvisioner", "HttpProvisioner", "Provisioner", "build_provisioner"]


class Provisioner(Protocol):
    """What an elastic pool needs from wherever its backends come from."""

    @property
    def name(self) -> str: ...
    @property
    def has_status(self) -> bool: ...
    async def open(self) -> None: ...
    async def close(self) -> None: ...
    async def provision(self, request_id: str) -> Engine: ...
    async def release(self, engine_id: str) -> None: ...
    async def engines(self) -> list[Engine]: ...
    async def status(self) -> OrchestratorStatus: ...
    async def stream_event(self, kind: str, payload: dict[str, Any], request_id: str) -> object: ...


class HttpProvisioner:
    """An HTTP orchestrator (the acestream-orchestrator API shape by default)."""

    has_status = True

    def __init__(self, config: ProvisionerConfig) -> None:
        assert config.url is not None
        self._config = config
        self._base = config.url
        self._host = config.backend_host or urlsplit(config.url).hostname or "127.0.0.1"
        self._session: aiohttp.ClientSession | None = None
        self._headers: dict[str, str] = {}
        if config.api_key is not None:
            self._headers["Authorization"] = f"Bearer {config.api_key.get_secret_value()}"

    @property
    def name(self) -> str:
        return self._base

    async def open(self) -> None:
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self._config.timeout),
            cookie_jar=aiohttp.DummyCookieJar(),
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _call(
        self, method: str, path: str, request_id: str = "", body: object = None
    ) -> tuple[int, Any]:
        if self._session is None:
            raise ProvisionerError("the provisioner is not open", retryable=False)
        headers = dict(self._headers)
        if request_id:
            headers["X-Request-ID"] = request_id
        try:
            async with self._session.request(
                method, self._base + path, json=body, headers=headers
            ) as response:
                text = await response.text()
                try:
                    data = await response.json(content_type=None) if text else None
                except ValueError:
                    data = None
                return response.status, data
        except TimeoutError as exc:
            raise ProvisionerError(
                f"{method} {path}: no answer within {self._config.timeout:g}s", code="timeout"
            ) from exc
        except (aiohttp.ClientError, OSError) as exc:
            raise ProvisionerError(
                f"{method} {path}: {type(exc).__name__}: {exc}", code="unreachable"
            ) from exc

    async def provision(self, request_id: str) -> Engine:
        body = {"labels": {"proxyfleet.request_id": request_id}} if request_id else {}
        status, data = await self._call("POST", self._config.paths.provision, request_id, body)
        if status >= 300:
            raise parse_refusal(status, data)
        return parse_provisioned(data, self._host, self._config.backend_path)

    async def release(self, engine_id: str) -> None:
        path = self._config.paths.release.replace("{id}", quote(engine_id, safe=""))
        status, data = await self._call("DELETE", path)
        if status >= 300 and status != 404:
            raise parse_refusal(status, data)

    async def engines(self) -> list[Engine]:
        status, data = await self._call("GET", self._config.paths.engines)
        if status >= 300:
            raise parse_refusal(status, data)
        return parse_engines(data, self._host, self._config.backend_path)

    async def status(self) -> OrchestratorStatus:
        status, data = await self._call("GET", self._config.paths.status)
        if status >= 300:
            raise parse_refusal(status, data)
        return parse_status(data)

    async def stream_event(self, kind: str, payload: dict[str, Any], request_id: str) -> object:
        """Report a stream event; the orchestrator's answer (a start's: the stream's state)."""
        paths = self._config.paths
        path = paths.stream_started if kind == "started" else paths.stream_ended
        status, data = await self._call("POST", path, request_id, payload)
        if status >= 300:
            raise parse_refusal(status, data)
        return data


_INTERPRETERS = ("python", "sh", "bash", "node", "uv")


class CommandProvisioner:
    """A local command, run once per new backend; it prints ``{"id": ..., "url": ...}``."""

    has_status = False

    def __init__(self, config: ProvisionerConfig) -> None:
        self._config = config

    @property
    def name(self) -> str:
        """The script's name (not its arguments, which may hold secrets)."""
        argv = self._config.command
        program = os.path.basename(argv[0])
        if len(argv) > 1 and program.startswith(_INTERPRETERS):
            return os.path.basename(argv[1])
        return program

    async def open(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def _run(self, argv: tuple[str, ...], request_id: str) -> bytes:
        env = dict(os.environ, PROXYFLEET_REQUEST_ID=request_id)
        try:
            # Not the loop's subprocess_exec: uvloop's has no close_fds (every inheritable
            # descriptor would cross). Popen forks and execs at once; the waiting is a thread's.
            process = subprocess.Popen(  # noqa: ASYNC220
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                start_new_session=True,
                close_fds=True,
                env=env,
            )
        except OSError as exc:
            raise ProvisionerError(
                f"cannot run {argv[0]!r}: {exc.strerror or exc}", code="command", retryable=False
            ) from exc
        try:
            out, err = await asyncio.wait_for(
                asyncio.to_thread(process.communicate), self._config.timeout
            )
        except (TimeoutError, asyncio.CancelledError):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            await asyncio.to_thread(process.wait)
            raise ProvisionerError(
                f"{self.name} did not finish within {self._config.timeout:g}s", code="timeout"
            ) from None
        if process.returncode != 0:
            tail = err.decode("utf-8", "replace").strip().splitlines()[-1:] or [""]
            raise ProvisionerError(
                f"{self.name} exited {process.returncode}: {tail[0]}".rstrip(": "),
                code="command_failed",
            )
        return out

    async def provision(self, request_id: str) -> Engine:
        out = await self._run(self._config.command, request_id)
        return parse_command_output(out, self._config.allowed_hosts)

    async def release(self, engine_id: str) -> None:
        if self._config.release_command:
            await self._run((*self._config.release_command, engine_id), "")

    async def engines(self) -> list[Engine]:
        return []

    async def status(self) -> OrchestratorStatus:
        raise ProvisionerError("a command provisioner has no status", retryable=False)

    async def stream_event(self, kind: str, payload: dict[str, Any], request_id: str) -> object:
        return None


def build_provisioner(config: ProvisionerConfig) -> Provisioner:
    return HttpProvisioner(config) if config.url is not None else CommandProvisioner(config)
