"""``up --watch``: a change to the deployment file, or to a proxyfleet config it names, is
re-validated and applied: nginx re-rendered, checked and reloaded, and only the servers whose
definition or config changed restarted. Debounced; an invalid change is reported and the
running fleet keeps going unchanged. Only the watched files trigger it, never our own output.
A change to ``redis:`` is refused with the reason: every proxyfleet server's pool lives there,
so it takes a ``down`` and an ``up``.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

from proxyfleet.errors import ConfigError
from proxyfleet.fleet.deploy import Deployment, load_deployment
from proxyfleet.fleet.gateways import check_gateways
from proxyfleet.fleet.manager import Manager, StartFailed, Supervisor
from proxyfleet.fleet.nginx import find_nginx, render_nginx, validate_nginx
from proxyfleet.fleet.portguard import PortState, inspect, port_owner

__all__ = ["Watcher", "changed_servers"]


def changed_servers(
    old: Deployment, new: Deployment, touched_configs: set[Path]
) -> tuple[set[str], set[str], set[str]]:
    """(restart, add, remove): pure, from the two deployments and the configs that changed.

    Only what the processes run with (port, instances, config, command, or the config file's
    content) restarts a server; routes and health paths only need nginx reloaded."""

    def runs_as(name: str, d: Deployment) -> tuple[object, ...]:
        s = d.servers[name]
        return (s.port, s.instances, s.config, s.command)

    restart = {
        name
        for name in old.servers.keys() & new.servers.keys()
        if runs_as(name, old) != runs_as(name, new)
        or (new.servers[name].config is not None and new.servers[name].config in touched_configs)
    }
    return restart, set(new.servers) - set(old.servers), set(old.servers) - set(new.servers)


def _mtimes(paths: list[Path]) -> dict[Path, float]:
    out = {}
    for path in paths:
        try:
            out[path] = path.stat().st_mtime_ns / 1e9
        except OSError:
            out[path] = -1.0
    return out


class Watcher:
    def __init__(self, manager: Manager, supervisor: Supervisor, debounce: float = 0.3) -> None:
        self.manager = manager
        self.supervisor = supervisor
        self.debounce = debounce
        self._seen = _mtimes(self._paths(supervisor.deployment))
        self._pending: float | None = None
        self._touched: set[Path] = set()

    def _paths(self, deployment: Deployment) -> list[Path]:
        configs = [s.config for s in deployment.servers.values() if s.config is not None]
        return [self.manager.deploy_path, *configs]

    def tick(self) -> None:
        now = _mtimes(self._paths(self.supervisor.deployment))
        if now != self._seen:
            self._touched |= {p for p in now if now[p] != self._seen.get(p)}
            self._seen = now
            self._pending = time.monotonic()
            return
        if self._pending is not None and time.monotonic() - self._pending >= self.debounce:
            self._pending = None
            if self.apply(self._touched):
                self._touched = set()
            # a refused change keeps what it touched: the edit that fixes it applies them all

    def apply(self, touched: set[Path]) -> bool:
        say = self.manager.say
        old = self.supervisor.deployment
        try:
            new = load_deployment(self.manager.deploy_path)
            check_gateways(new, self.manager.deploy_path, self.manager.environ)
            if new.redis != old.redis:
                say(
                    "change refused, the fleet keeps running unchanged: redis: every proxyfleet "
                    "server's pool lives there; a change to it needs 'proxyfleet down' and "
                    "'proxyfleet up'"
                )
                return False
            binary = find_nginx(new.nginx.binary)
            check = self.manager.prefix / "nginx-next.conf"
            check.write_text(render_nginx(new, self.manager.prefix))
            validate_nginx(binary, check, self.manager.prefix)
        except ConfigError as error:
            say(f"change refused, the fleet keeps running unchanged: {error}")
            return False
        restart, add, remove = changed_servers(old, new, touched)
        taken = self._taken_ports(new, restart | add)
        if taken:
            say(f"change refused, the fleet keeps running unchanged: {taken}")
            return False
        try:
            self._restart(new, restart | add, remove)
        except StartFailed as failure:
            say(f"change failed while restarting servers: {failure}")
            return False
        check.replace(self.manager.prefix / "nginx.conf")
        result = subprocess.run(
            [
                binary,
                "-p",
                str(self.manager.prefix),
                "-c",
                str(self.manager.prefix / "nginx.conf"),
                "-s",
                "reload",
            ],
            capture_output=True,
            text=True,
            timeout=30,
        )
        if result.returncode != 0:
            say(f"nginx reload failed: {result.stderr.strip()}")
            return False
        self.supervisor.deployment = new
        self.manager._save()
        self._seen = _mtimes(self._paths(new))
        changed = ", ".join(sorted(restart | add | remove)) or "none"
        say(f"change applied: nginx reloaded; servers restarted or changed: {changed}")
        return True

    def _taken_ports(self, new: Deployment, starting: set[str]) -> str | None:
        """A port the changed servers would need that someone else holds (ours do not count)."""
        ours = {p.port for p in self.manager.processes}
        for name in sorted(starting):
            for port in new.servers[name].ports():
                if port in ours:
                    continue
                if inspect("127.0.0.1", port, record_alive_and_ours=False) is not PortState.FREE:
                    owner = port_owner(port) or "another process"
                    return f"servers.{name} needs port {port}, held by {owner}"
        return None

    def _restart(self, new: Deployment, start: set[str], remove: set[str]) -> None:
        manager = self.manager
        going = [p for p in manager.processes if p.role == "worker" and p.server in start | remove]
        manager.stop_processes(going, sorted(start | remove))
        manager.processes = [p for p in manager.processes if p not in going]
        started = []
        for name in sorted(start):
            server = new.servers[name]
            for port in server.ports():
                manager._start_worker(name, server, port, new)
                started.append((manager.processes[-1], server.health))
        for process, health in started:
            manager._wait_healthy(process, health, 30.0)
