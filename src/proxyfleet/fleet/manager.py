"""Multi-process mode: ``up`` / ``ps`` / ``down`` for a deployment file.

``up``: validate (the deployment, and every proxyfleet server's config as it will run) →
pre-check every port (a start never half-succeeds) and that a Redis given by URL answers →
render and check the nginx config → start the deployment's Redis and wait until it answers →
start the workers → wait for each health endpoint → start nginx. Any failure rolls back
everything it started and says why. ``down`` (and Ctrl+C on a foreground ``up``) stops in order
nginx → functional servers → core → Redis: SIGTERM to each process group, SIGKILL after the
timeout, and checks that no process is left. Two ``up`` of one deployment never run at once
(the second is refused); a failure shows only what this ``up``'s processes wrote to their logs.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

from proxyfleet.errors import ConfigError
from proxyfleet.fleet.deploy import Deployment, RedisSettings, ServerSpec, load_deployment
from proxyfleet.fleet.gateways import check_gateways, gateway_env
from proxyfleet.fleet.locks import FileLock, LockBusy
from proxyfleet.fleet.nginx import find_nginx, prepare_prefix, render_nginx, validate_nginx
from proxyfleet.fleet.portguard import PortState, connect, http_get, inspect, port_owner
from proxyfleet.fleet.records import log_size, log_tail, process_start_ticks, spawn_logged
from proxyfleet.fleet.redis_server import find_redis, redis_answers, redis_command
from proxyfleet.pool.backend import public_url

__all__ = ["Manager", "Process"]

Say = Callable[[str], None]


@dataclass(frozen=True, slots=True)
class Process:
    role: str  # "nginx", "worker" or "redis"
    server: str
    port: int
    pid: int
    ticks: int
    log: str

    def alive(self) -> bool:
        return process_start_ticks(self.pid) == self.ticks


class StartFailed(Exception):
    """Something in ``up`` failed: everything started so far is rolled back."""


def _healthy(port: int, path: str) -> bool:
    got = http_get("127.0.0.1", port, path, 1.0)
    return got is not None and got[0] < 400


def _listening(port: int) -> bool:
    sock = connect("127.0.0.1", port, 0.5)
    if sock is None:
        return False
    sock.close()
    return True


class Manager:
    """One deployment file's processes, with their state under ``runtime_dir`` (absolute: a
    relative one would mean another place to nginx, which reads it against its prefix).
    ``environ`` is the environment every process it starts inherits (default: this one's)."""

    def __init__(
        self,
        deploy_path: Path,
        runtime_dir: Path,
        say: Say,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        if not runtime_dir.is_absolute():
            raise ValueError(f"the runtime directory must be absolute, got {runtime_dir}")
        self.environ = dict(os.environ if environ is None else environ)
        self.deploy_path = deploy_path.resolve()
        digest = hashlib.sha256(str(self.deploy_path).encode()).hexdigest()[:8]
        self.state_dir = runtime_dir / f"deploy-{deploy_path.stem}-{digest}"
        self.say = say
        self.processes: list[Process] = []
        self._popen: dict[int, subprocess.Popen[bytes]] = {}
        self._log_from: dict[int, int] = {}  # pid -> where its lines begin in its log

    # -- state ------------------------------------------------------------------------------------
    @property
    def state_file(self) -> Path:
        return self.state_dir / "state.json"

    @property
    def prefix(self) -> Path:
        return self.state_dir / "nginx"

    @property
    def redis_dir(self) -> Path:
        """The working directory and pid file of the Redis that ``up`` starts."""
        return self.state_dir / "redis"

    def _save(self) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        data = {
            "deploy": str(self.deploy_path),
            "supervisor": os.getpid(),
            "supervisor_ticks": process_start_ticks(os.getpid()),
            "processes": [asdict(p) for p in self.processes],
        }
        fd, temp = tempfile.mkstemp(dir=self.state_dir, prefix="state.")
        with os.fdopen(fd, "w") as handle:
            json.dump(data, handle)
        os.replace(temp, self.state_file)

    def load_state(self) -> tuple[list[Process], tuple[int, int | None] | None]:
        try:
            data = json.loads(self.state_file.read_text())
        except (OSError, ValueError):
            return [], None
        processes = [Process(**p) for p in data.get("processes", [])]
        return processes, (data.get("supervisor"), data.get("supervisor_ticks"))

    # -- up ---------------------------------------------------------------------------------------
    def up(self, wait: float = 30.0) -> tuple[int, Deployment | None]:
        deployment = load_deployment(self.deploy_path)
        lock = FileLock(self.state_dir / "up.lock")
        try:
            lock.acquire()
        except LockBusy:
            self.say(
                f"another 'proxyfleet up' of {self.deploy_path.name} is under way; not starting"
            )
            return 1, None
        try:
            return self._up(deployment, wait)
        finally:
            lock.release()

    def _up(self, deployment: Deployment, wait: float) -> tuple[int, Deployment | None]:
        running = [p for p in self.load_state()[0] if p.alive()]
        if running:
            self.say(
                f"{self.deploy_path.name} is already up ({len(running)} processes); "
                "'proxyfleet down' first"
            )
            return 1, None
        binary = find_nginx(deployment.nginx.binary)
        redis = deployment.redis
        redis_binary = find_redis(redis.binary) if redis is not None and redis.port else None
        check_gateways(deployment, self.deploy_path, self.environ)
        blocked = self._blocked_ports(deployment)
        if blocked:
            for line in blocked:
                self.say(line)
            self.say("not starting anything: free these ports or change the deployment")
            return 1, None
        if redis is not None and redis.url is not None:
            problem = redis_answers(redis.url, timeout=5.0)
            if problem is not None:
                self.say(f"redis at {public_url(redis.url)} does not answer: {problem}")
                self.say("not starting anything: start that Redis or change redis.url")
                return 1, None
        conf = self._write_nginx(deployment, binary)
        try:
            if redis is not None and redis_binary is not None:
                self._start_redis(redis_binary, redis, wait)
            for name in reversed(deployment.stop_order()):  # core first
                server = deployment.servers[name]
                for port in server.ports():
                    self._start_worker(name, server, port, deployment)
            self._save()
            for process in self.processes:
                if process.role == "worker":
                    self._wait_healthy(process, deployment.servers[process.server].health, wait)
            self._start_nginx(binary, conf, deployment, wait)
            self._save()
        except StartFailed as failure:
            self.say(f"up failed: {failure}; rolling back")
            self.stop_processes(self.processes, deployment.stop_order())
            self.state_file.unlink(missing_ok=True)
            return 1, None
        workers = sum(1 for p in self.processes if p.role == "worker")
        store = "" if redis is None else f", redis on {_where(redis)}"
        self.say(
            f"up: nginx on http://{deployment.nginx.host}:{deployment.nginx.port} in front "
            f"of {workers} workers{store}; logs in {self.state_dir}"
        )
        return 0, deployment

    def _blocked_ports(self, deployment: Deployment) -> list[str]:
        wanted = [("nginx.port", deployment.nginx.host, deployment.nginx.port)]
        if deployment.redis is not None and deployment.redis.port is not None:
            wanted.append(("redis.port", "127.0.0.1", deployment.redis.port))
        for name, server in deployment.servers.items():
            wanted += [(f"servers.{name}", "127.0.0.1", port) for port in server.ports()]
        lines = []
        for who, host, port in wanted:
            state = inspect(host, port, record_alive_and_ours=False)
            if state is not PortState.FREE:
                owner = port_owner(port) or "another process"
                lines.append(f"port {port} ({who}) is {state.value}: held by {owner}")
        return lines

    def _write_nginx(self, deployment: Deployment, binary: str) -> Path:
        prepare_prefix(self.prefix)
        conf = self.prefix / "nginx.conf"
        conf.write_text(render_nginx(deployment, self.prefix))
        validate_nginx(binary, conf, self.prefix)
        return conf

    def _command(self, server: ServerSpec, port: int) -> list[str]:
        if server.config is not None:
            return [
                sys.executable,
                "-m",
                "proxyfleet",
                "serve",
                "--config",
                str(server.config),
                "--port",
                str(port),
            ]
        assert server.command is not None
        return [part.replace("{port}", str(port)) for part in server.command]

    def _spawn(
        self,
        role: str,
        name: str,
        port: int,
        command: list[str],
        env: Mapping[str, str] | None = None,
    ) -> Process:
        """Start one process of the deployment, in the deployment file's directory, with
        ``environ`` and ``env`` on top of it."""
        log = self.state_dir / f"{name}_{port}.log"
        self.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        since = log_size(log)
        try:
            popen = spawn_logged(
                command, log, self.deploy_path.parent, {**self.environ, **(env or {})}
            )
        except OSError as exc:
            raise StartFailed(f"{name} on port {port}: cannot run {command[0]}: {exc}") from exc
        ticks = process_start_ticks(popen.pid) or 0
        process = Process(role, name, port, popen.pid, ticks, str(log))
        self._popen[popen.pid] = popen
        self._log_from[popen.pid] = since
        self.processes.append(process)
        return process

    def _start_worker(
        self, name: str, server: ServerSpec, port: int, deployment: Deployment
    ) -> None:
        """A proxyfleet server gets the deployment's pool store (see :mod:`.gateways`)."""
        env = gateway_env(deployment) if server.config is not None else {}
        self._spawn("worker", name, port, self._command(server, port), env)

    def _start_redis(self, binary: str, redis: RedisSettings, wait: float) -> None:
        assert redis.port is not None
        self.redis_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        command = redis_command(binary, redis, self.redis_dir)
        process = self._spawn("redis", "redis", redis.port, command)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if self._popen[process.pid].poll() is not None:
                raise StartFailed(
                    f"redis-server on port {redis.port} exited with code "
                    f"{self._popen[process.pid].returncode}; its log ends:\n{self._tail(process)}"
                )
            if redis_answers(redis.store_url, timeout=0.5) is None:
                return
            time.sleep(0.05)
        raise StartFailed(f"redis-server did not answer on port {redis.port} within {wait:g}s")

    def _wait_healthy(self, process: Process, path: str, wait: float) -> None:
        deadline = time.monotonic() + wait
        popen = self._popen[process.pid]
        while time.monotonic() < deadline:
            if popen.poll() is not None:
                raise StartFailed(
                    f"{process.server} on port {process.port} exited with code "
                    f"{popen.returncode}; its log ends:\n{self._tail(process)}"
                )
            if _healthy(process.port, path):
                return
            time.sleep(0.05)
        raise StartFailed(
            f"{process.server} on port {process.port} did not answer {path} within {wait:g}s"
        )

    def _start_nginx(self, binary: str, conf: Path, deployment: Deployment, wait: float) -> None:
        command = [binary, "-p", str(self.prefix), "-c", str(conf), "-g", "daemon off;"]
        process = self._spawn("nginx", "nginx", deployment.nginx.port, command)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if self._popen[process.pid].poll() is not None:
                raise StartFailed(f"nginx exited; its log ends:\n{self._tail(process)}")
            if _listening(deployment.nginx.port):
                return
            time.sleep(0.05)
        raise StartFailed(f"nginx did not listen on port {deployment.nginx.port} in {wait:g}s")

    def _tail(self, process: Process) -> str:
        """What this process wrote to its log (not an earlier run's lines)."""
        return log_tail(Path(process.log), 15, self._log_from.get(process.pid, 0))

    # -- down ----------------------------------------------------------------------------------
    def stop_processes(
        self, processes: list[Process], order: list[str], timeout: float = 10.0
    ) -> list[Process]:
        """nginx first, then servers in ``order``, Redis last (every server's pool lives there
        until it stopped); returns the processes left alive (none)."""
        groups = [[p for p in processes if p.role == "nginx"]]
        groups += [
            [p for p in processes if p.role == "worker" and p.server == name] for name in order
        ]
        groups.append([p for p in processes if p.role == "redis"])
        for group in groups:
            live = [p for p in group if p.alive()]
            for p in live:
                _killpg(p.pid, signal.SIGTERM)
            deadline = time.monotonic() + timeout
            while any(self._alive(p) for p in live) and time.monotonic() < deadline:
                time.sleep(0.05)
            for p in live:
                if self._alive(p):
                    self.say(f"{p.server} (pid {p.pid}) ignored SIGTERM for {timeout:g}s; SIGKILL")
                    _killpg(p.pid, signal.SIGKILL)
            for p in live:
                end = time.monotonic() + 5
                while self._alive(p) and time.monotonic() < end:
                    time.sleep(0.02)
        return [p for p in processes if self._alive(p)]

    def _alive(self, process: Process) -> bool:
        popen = self._popen.get(process.pid)
        if popen is not None and popen.poll() is not None:
            return False  # our child, reaped
        return process.alive()

    def down(self, timeout: float = 10.0) -> int:
        processes, supervisor = self.load_state()
        if not processes and supervisor is None:
            self.say(f"{self.deploy_path.name} is not up")
            return 0
        if supervisor is not None and supervisor[0] != os.getpid():
            pid, ticks = supervisor
            if process_start_ticks(pid) == ticks:  # a foreground 'up': let it shut down itself
                _killpg_or_kill(pid, signal.SIGTERM)
                end = time.monotonic() + timeout + 10
                while process_start_ticks(pid) == ticks and time.monotonic() < end:
                    time.sleep(0.05)
        try:
            order = load_deployment(self.deploy_path).stop_order()
        except ConfigError:  # the file changed or went away: the recorded order, core last
            order = list(dict.fromkeys(p.server for p in processes if p.role == "worker"))
        left = self.stop_processes(processes, order, timeout)
        self.state_file.unlink(missing_ok=True)
        if left:
            self.say(
                f"down: {len(left)} process(es) survived SIGKILL: "
                + ", ".join(f"{p.server} pid {p.pid}" for p in left)
            )
            return 1
        self.say(f"down: stopped {len(processes)} processes")
        return 0


def _where(redis: RedisSettings) -> str:
    return f"127.0.0.1:{redis.port}" if redis.port is not None else public_url(redis.store_url)


def _killpg(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def _killpg_or_kill(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, sig)


class Supervisor:
    """A foreground ``up``: handlers only record the signal; this loop acts on it."""

    def __init__(self, manager: Manager, deployment: Deployment) -> None:
        self.manager = manager
        self.deployment = deployment
        self.signals: list[int] = []
        self._reported: set[int] = set()

    def _record(self, sig: int, _frame: object) -> None:
        self.signals.append(sig)

    def run(self, tick: Callable[[], None] | None = None) -> int:
        previous = {s: signal.signal(s, self._record) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            while not self.signals:
                self._report_deaths()
                if tick is not None:
                    tick()
                time.sleep(0.2)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        redis = any(p.role == "redis" for p in self.manager.processes)
        self.manager.say(
            "stopping: nginx, then the servers, the core last" + (", then redis" if redis else "")
        )
        left = self.manager.stop_processes(self.manager.processes, self.deployment.stop_order())
        self.manager.state_file.unlink(missing_ok=True)
        return 1 if left else 0

    def _report_deaths(self) -> None:
        for process in self.manager.processes:
            popen = self.manager._popen.get(process.pid)
            if popen is not None and popen.poll() is not None and process.pid not in self._reported:
                self._reported.add(process.pid)
                self.manager.say(
                    f"{process.server} on port {process.port} exited with code "
                    f"{popen.returncode}; see {process.log}"
                )
