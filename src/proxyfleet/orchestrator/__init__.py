"""Elastic pools: ask a provisioner (an HTTP orchestrator or a local command) for backends when
every backend is busy, poll its health, release idle backends, report stream events."""

from proxyfleet.orchestrator.elastic import Elastic
from proxyfleet.orchestrator.events import StreamEvents
from proxyfleet.orchestrator.provisioner import (
    CommandProvisioner,
    HttpProvisioner,
    Provisioner,
    build_provisioner,
)

__all__ = [
    "CommandProvisioner",
    "Elastic",
    "HttpProvisioner",
    "Provisioner",
    "StreamEvents",
    "build_provisioner",
]
