"""The orchestrator's answers, parsed into small values. Pure: no I/O here.

The shapes are those of the acestream-orchestrator API: ``POST /provision/acestream`` answers
``{"container_id", "host_http_port", ...}``; a refusal is ``{"detail": {"code", "message",
"recovery_eta_seconds", "can_retry", "should_wait"}}`` (or a bare ``{"detail": "text"}``);
``GET /orchestrator/status`` answers ``{"status", "provisioning": {"can_provision",
"blocked_reason", "blocked_reason_details": {...}}, "engines": {...}, "streams": {...}}``. A
refusal's ``can_retry`` decides whether to try again and its ``recovery_eta_seconds`` when; a
body its models refused is a 422 whose ``detail`` lists ``{"loc", "msg", ...}``, kept in the
error's message.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from proxyfleet.errors import ProvisionerAuthError, ProvisionerError

__all__ = [
    "Engine",
    "OrchestratorStatus",
    "parse_command_output",
    "parse_engines",
    "parse_provisioned",
    "parse_refusal",
    "parse_status",
]


@dataclass(frozen=True, slots=True)
class Engine:
    """A backend the provisioner handed out: its id and where it listens."""

    id: str
    url: str


@dataclass(frozen=True, slots=True)
class OrchestratorStatus:
    status: str  # healthy / degraded / unavailable
    can_provision: bool
    blocked_reason: str | None = None
    code: str | None = None
    recovery_eta_seconds: float | None = None
    should_wait: bool = False
    engines: int | None = None
    streams: int | None = None

    def fields(self) -> dict[str, Any]:
        """For the ``orchestrator_health`` debug category and the admin output."""
        return {
            "status": self.status,
            "can_provision": self.can_provision,
            "blocked_reason": self.blocked_reason,
            "blocked_code": self.code,
            "recovery_eta_seconds": self.recovery_eta_seconds,
            "should_wait": self.should_wait,
            "engine_count": self.engines,
            "stream_count": self.streams,
        }


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        return None
    return float(value)


def _count(value: object) -> int | None:
    if isinstance(value, dict):
        value = value.get("total", value.get("active"))
    if isinstance(value, list):
        return len(value)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _url(host: str, port: object, path: str) -> str:
    if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
        raise ProvisionerError(
            f"the orchestrator gave no usable port (got {port!r})", code="bad_answer"
        )
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}{path}"


def parse_provisioned(data: object, host: str, path: str) -> Engine:
    """A ``POST /provision/acestream`` answer: the new engine on ``host``."""
    if not isinstance(data, dict) or not isinstance(data.get("container_id"), str):
        raise ProvisionerError("the orchestrator's answer has no 'container_id'", code="bad_answer")
    return Engine(data["container_id"], _url(host, data.get("host_http_port"), path))


def parse_engines(data: object, host: str, path: str) -> list[Engine]:
    """A ``GET /engines`` answer (a list of engine states); entries without a port are skipped."""
    if not isinstance(data, list):
        raise ProvisionerError("the orchestrator's engine list is not a list", code="bad_answer")
    engines = []
    for item in data:
        if not isinstance(item, dict) or not isinstance(item.get("container_id"), str):
            continue
        port = item.get("port", item.get("host_http_port"))
        if item.get("health_status") == "unhealthy":
            continue
        try:
            engines.append(Engine(item["container_id"], _url(host, port, path)))
        except ProvisionerError:
            continue
    return engines


_LEGACY_CODES = (
    ("vpn", "vpn_disconnected"),
    ("circuit", "circuit_breaker"),
    ("capacity", "max_capacity"),
)


def _field_errors(detail: list[object]) -> str:
    """FastAPI's 422 ``detail`` (``[{"loc", "msg", "input"}, ...]``) as one line."""
    parts = []
    for item in detail:
        if not isinstance(item, dict):
            continue
        loc = [str(p) for p in item.get("loc") or () if isinstance(p, str)]
        where = ".".join(loc[1:] if loc[:1] == ["body"] else loc) or "body"
        got = f" (got {item['input']!r})" if isinstance(item.get("input"), str | int) else ""
        parts.append(f"{where}: {item.get('msg')}{got}")
    return "; ".join(parts)


def parse_refusal(status: int, data: object) -> ProvisionerError:
    """A non-2xx answer to an orchestrator call, as an error that knows whether to retry."""
    detail = data.get("detail") if isinstance(data, dict) else None
    if status in (401, 403):  # no key, or a wrong one: no retry will help
        said = f" {detail}" if isinstance(detail, str) and detail else ""
        return ProvisionerAuthError(
            f"the orchestrator refused the key in pool.provisioner.api_key ({status}{said})",
            status=status,
        )
    if isinstance(detail, list):  # the body did not pass its models: the same would fail again
        return ProvisionerError(
            f"orchestrator refused ({status}): {_field_errors(detail)}",
            code="invalid_request",
            retryable=False,
        )
    if isinstance(detail, dict):
        # can_retry says whether to try again (false while its own breaker is open, whatever
        # should_wait says); an ETA, when it gives one, says not before then.
        code = str(detail.get("code") or detail.get("error") or "refused")
        message = str(detail.get("message") or code)
        can_retry = detail.get("can_retry")
        return ProvisionerError(
            f"orchestrator refused ({status} {code}): {message}",
            code=code,
            retryable=can_retry if isinstance(can_retry, bool) else status >= 500 or status == 429,
            eta=_number(detail.get("recovery_eta_seconds")),
        )
    text = detail if isinstance(detail, str) else ""
    lowered = text.lower()
    code = next((c for word, c in _LEGACY_CODES if word in lowered), "general_error")
    # 5xx and 429 are worth another try; any other 4xx (bad key, bad request) is not.
    retryable = status >= 500 or status == 429 or code != "general_error"
    shown = f": {text}" if text else ""
    return ProvisionerError(
        f"orchestrator answered {status}{shown}", code=code, retryable=retryable
    )


def parse_status(data: object) -> OrchestratorStatus:
    """A ``GET /orchestrator/status`` answer."""
    if not isinstance(data, dict):
        raise ProvisionerError("the orchestrator status is not an object", code="bad_answer")
    status = str(data.get("status") or "unknown")
    prov = data.get("provisioning")
    prov = prov if isinstance(prov, dict) else {}
    details = prov.get("blocked_reason_details")
    details = details if isinstance(details, dict) else {}
    can = prov.get("can_provision")
    reason = prov.get("blocked_reason")
    return OrchestratorStatus(
        status=status,
        can_provision=can if isinstance(can, bool) else status != "unavailable",
        blocked_reason=str(reason) if reason else None,
        code=str(details["code"]) if details.get("code") else None,
        recovery_eta_seconds=_number(
            details.get("recovery_eta_seconds", prov.get("recovery_eta_seconds"))
        ),
        should_wait=bool(details.get("should_wait", prov.get("should_wait", False))),
        engines=_count(data.get("engines")),
        streams=_count(data.get("streams")),
    )


def parse_command_output(stdout: bytes, allowed_hosts: tuple[str, ...]) -> Engine:
    """What a provisioning command printed: one JSON object ``{"id": ..., "url": ...}``."""
    try:
        data = json.loads(stdout.decode("utf-8", "replace").strip().splitlines()[-1])
    except (IndexError, ValueError) as exc:
        raise ProvisionerError(
            f"the provisioning command printed no JSON object: {exc}", code="bad_answer"
        ) from exc
    if not isinstance(data, dict) or not isinstance(data.get("url"), str):
        raise ProvisionerError(
            'the provisioning command must print {"id": ..., "url": "http://host:port/v1"}',
            code="bad_answer",
        )
    url = data["url"].rstrip("/")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ProvisionerError(f"not an http(s) URL: {url!r}", code="bad_answer")
    if parts.hostname not in allowed_hosts:
        raise ProvisionerError(
            f"host {parts.hostname!r} is not in provisioner.allowed_hosts",
            code="host_not_allowed",
            retryable=False,
        )
    ident = data.get("id")
    return Engine(str(ident) if ident else f"{parts.hostname}:{parts.port}", url)
