"""Configuration: one typed model, loaded from YAML, environment and CLI flags."""

from proxyfleet.config.credentials import resolve_backends
from proxyfleet.config.loader import load_config
from proxyfleet.config.model import Config

__all__ = ["Config", "load_config", "resolve_backends"]
