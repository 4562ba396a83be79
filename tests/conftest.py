"""Real processes on 127.0.0.1: the proxyfleet CLI (gateway, mock) started as subprocesses."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

SRC = Path(__file__).resolve().parent.parent / "src"


def cli_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROXYFLEET_")}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


@dataclass
class Proc:
    """A proxyfleet process whose output goes to a file we can read (and scan) later."""

    popen: subprocess.Popen[bytes]
    log: Path
    url: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for_line(self, prefix: str, timeout: float = 20.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self.output().splitlines():
                if line.startswith(prefix):
                    return line
            if self.popen.poll() is not None:
                raise AssertionError(f"process exited {self.popen.returncode}:\n{self.output()}")
            time.sleep(0.02)
        raise AssertionError(
            f"no line starting with {prefix!r} within {timeout}s:\n{self.output()}"
        )

    @property
    def root(self) -> str:
        """``http://host:port`` without the /v1."""
        return self.url.rsplit("/v1", 1)[0] if self.url.endswith("/v1") else self.url

    def get_json(
        self, path: str, timeout: float = 5.0, headers: dict[str, str] | None = None
    ) -> Any:
        request = urllib.request.Request(self.root + path, headers=headers or {})
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.load(response)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        if self.popen.poll() is None:
            self.popen.send_signal(sig)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)
        return self.popen.returncode


class Processes:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.procs: list[Proc] = []
        self.count = 0

    def spawn(self, *args: str, env: dict[str, str] | None = None) -> Proc:
        """``python -m proxyfleet ARGS``."""
        return self.spawn_python("-m", "proxyfleet", *args, env=env)

    def spawn_python(self, *args: str, env: dict[str, str] | None = None) -> Proc:
        self.count += 1
        log = self.tmp / f"proc-{self.count}.log"
        handle = log.open("wb")
        popen = subprocess.Popen(
            [sys.executable, *args],
            stdout=handle,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=cli_env(env),
            cwd=self.tmp,
        )
        handle.close()
        proc = Proc(popen, log)
        self.procs.append(proc)
        return proc

    def mock(self, *flags: str, port: int = 0) -> Proc:
        proc = self.spawn("mock", "--port", str(port), *flags)
        proc.url = proc.wait_for_line("mock listening on ").split()[-1]
        return proc

    def orchestrator(self, *flags: str) -> Proc:
        """``proxyfleet mock-orchestrator`` on a free port; ``url`` is its base URL."""
        proc = self.spawn("mock-orchestrator", "--port", "0", *flags)
        proc.url = proc.wait_for_line("mock orchestrator listening on ").split()[-1]
        return proc

    def gateway(self, *flags: str, env: dict[str, str] | None = None) -> Proc:
        proc = self.spawn("serve", "--port", "0", *flags, env=env)
        line = proc.wait_for_line("proxyfleet serving ")
        proc.url = line.split()[2]
        wait_live(proc)
        return proc

    def close(self) -> None:
        """SIGTERM first (so processes stop what they started), SIGKILL what lingers."""
        for proc in self.procs:
            if proc.popen.poll() is None:
                proc.popen.terminate()
        for proc in self.procs:
            try:
                proc.popen.wait(10)
            except subprocess.TimeoutExpired:
                proc.popen.kill()
                proc.popen.wait(5)


def wait_live(proc: Proc, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            proc.get_json("/live", timeout=1.0)
            return
        except (urllib.error.URLError, ConnectionError, OSError):
            time.sleep(0.02)
    raise AssertionError(f"{proc.url} never became live:\n{proc.output()}")


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[Processes]:
    processes = Processes(tmp_path)
    yield processes
    processes.close()


def write_keys(directory: Path, keys: dict[str, str]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name, key in keys.items():
        (directory / f"{name}.key").write_text(key + "\n")
    return directory


def run_cli(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None, timeout: float = 30.0
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "proxyfleet", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=cli_env(env),
        cwd=cwd,
        stdin=subprocess.DEVNULL,
    )
