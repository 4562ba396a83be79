"""What the orchestrator says about itself, and whether provisioning is blocked now.

The status is polled (``GET /orchestrator/status``); while it says it cannot provision, or a
refusal came with an ETA, a request that would need a new backend fails fast with 503
``provisioning_blocked`` and the ETA as ``Retry-After``, and no provisioning call goes out. A
refusal's ETA holds until it passes (or a provisioning succeeds), whatever the status says
meanwhile: the status describes the orchestrator, the refusal what it will do for us.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass

from proxyfleet.debuglog.recorder import DebugRecorder
from proxyfleet.errors import ProvisionerError, ProvisioningBlocked
from proxyfleet.logs import event
from proxyfleet.orchestrator.api import OrchestratorStatus
from proxyfleet.orchestrator.provisioner import Provisioner

__all__ = ["OrchestratorHealth", "retry_after"]

_log = logging.getLogger("proxyfleet.orchestrator")


def retry_after(seconds: float | None) -> float:
    """A ``Retry-After`` in whole seconds, at least 1."""
    return float(max(1, math.ceil(seconds))) if seconds is not None else 1.0


@dataclass(slots=True)
class _Block:
    reason: str
    until: float | None  # monotonic; None: until the status says otherwise


class OrchestratorHealth:
    def __init__(
        self, provisioner: Provisioner, status_interval: float, debug: DebugRecorder | None
    ) -> None:
        self._provisioner = provisioner
        self._interval = status_interval
        self._debug = debug
        self._block: _Block | None = None  # the status says so
        self._hold: _Block | None = None  # a refusal's ETA says so
        self.status: OrchestratorStatus | None = None

    @property
    def reason(self) -> str | None:
        """Why provisioning is blocked, while it is."""
        block = self._hold or self._block
        return None if block is None else block.reason

    def _current(self, now: float) -> _Block | None:
        if self._hold is not None and self._hold.until is not None and now >= self._hold.until:
            self._hold = None
        if self._block is not None and self._block.until is not None and now >= self._block.until:
            self._block = None
        return self._hold or self._block

    def blocked(self, now: float) -> ProvisioningBlocked | None:
        """The error for a request that would need a new backend now, if provisioning is
        blocked (``now`` is monotonic)."""
        block = self._current(now)
        if block is None:
            return None
        status = self.status
        eta = (
            block.until - now
            if block.until is not None
            else (status.recovery_eta_seconds if status is not None else None)
        )
        return ProvisioningBlocked(
            f"every backend is busy and the orchestrator cannot provision another: {block.reason}",
            retry_after=retry_after(eta if eta is not None else self._interval),
        )

    def block(self, reason: str, eta: float, now: float) -> None:
        """A refusal said to wait ``eta`` seconds before asking again."""
        self._hold = _Block(reason, now + eta)

    def clear(self) -> None:
        """A provisioning succeeded: whatever blocked it is over."""
        self._block = self._hold = None

    async def poll(self) -> None:
        """Ask the orchestrator how it is; log a change and record it in debug mode."""
        started = time.perf_counter()
        try:
            status = await self._provisioner.status()
        except ProvisionerError as exc:
            status = OrchestratorStatus("unavailable", False, f"status check failed: {exc}")
        seconds = time.perf_counter() - started
        previous, self.status = self.status, status
        if not status.can_provision:
            eta = status.recovery_eta_seconds
            until = time.monotonic() + eta if eta is not None else None
            self._block = _Block(status.blocked_reason or f"orchestrator is {status.status}", until)
        else:
            self._block = None  # the orchestrator says it can provision again
        if self._debug is not None:
            self._debug.orchestrator_health(seconds, **status.fields())
        if previous is None or (previous.status, previous.can_provision) != (
            status.status,
            status.can_provision,
        ):
            event(
                _log,
                "orchestrator_status",
                logging.INFO if status.status == "healthy" else logging.WARNING,
                status=status.status,
                can_provision=status.can_provision,
                blocked_reason=status.blocked_reason,
            )
