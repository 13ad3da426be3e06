"""A small cluster of real processes on loopback: replicas (``python -m rtc_server``) sharing one Redis,
and routers (``python -m rtc_server.router``) in front of them. For the failover tests and benchmarks.
"""

from __future__ import annotations

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
import yaml

from tests.processes import free_port, stop_process

__all__ = ["Cluster", "Process", "cluster"]

REPO = Path(__file__).resolve().parents[1]
LOOPBACK = "127.0.0.1"
READY_TIMEOUT_S = 30.0


@dataclass
class Process:
    """One server process: its URL, config file and the process itself (None once stopped)."""

    name: str
    url: str
    port: int
    config_path: Path
    command: list[str]
    process: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None

    def start(self) -> None:
        assert self.log_path is not None
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(self.command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=os.environ)
        log.close()

    def wait_ready(self, path: str = "/readyz", timeout_s: float = READY_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.url}{path}", timeout=1) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.05)
        raise TimeoutError(f"{self.name} not ready at {self.url}{path}:\n{self.log_tail()}")

    def kill(self) -> None:
        """SIGKILL: nothing runs on it any more, as when a machine dies."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()

    def terminate(self, timeout_s: float = 20.0) -> int:
        """SIGTERM and wait: the graceful way; returns the exit status."""
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=timeout_s)

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process, 10.0)

    def log_tail(self, size: int = 4000) -> str:
        return self.log_path.read_text(errors="replace")[-size:] if self.log_path and self.log_path.exists() else ""


@dataclass
class Cluster:
    """Replicas and routers sharing ``redis_url``; everything is stopped by ``close``."""

    workdir: Path
    redis_url: str
    processes: list[Process] = field(default_factory=list)
    ports: set[int] = field(default_factory=set)  # handed out already: a process may not have bound its own yet

    def _port(self) -> int:
        """A free port no other process of this cluster was given (the kernel may offer one twice before it is bound)."""
        while (port := free_port(LOOPBACK)) in self.ports:
            pass
        self.ports.add(port)
        return port

    def replica(self, name: str, **sections: dict[str, Any]) -> Process:
        port = self._port()
        config: dict[str, Any] = {
            "server": {"host": LOOPBACK, "port": port},
            "pool": {"max_parallel": 2},
            "default_request": {"sampling": {"width": 256, "height": 256, "fps": 24, "num_frames": 24}},
            "streaming": {"max_sessions": 6},
            "store": {"backend": "redis", "redis_url": self.redis_url},
            "webrtc": {"ice_host_addresses": [LOOPBACK]},
            "limits": {"sessions_per_client": 100, "offers_per_minute": 10_000},
        }
        for section, values in sections.items():
            config[section] = {**config.get(section, {}), **values}
        return self._add(name, port, config, [sys.executable, "-m", "rtc_server", "--log-level", "INFO"])

    def router(self, name: str, replicas: list[Process], **options: Any) -> Process:
        port = self._port()
        config: dict[str, Any] = {
            "host": LOOPBACK,
            "port": port,
            "redis_url": self.redis_url,
            "replicas": [{"url": r.url, "role": "primary" if i == 0 else "secondary"} for i, r in enumerate(replicas)],
            "health_check_interval_seconds": 0.5,
            "health_check_timeout_seconds": 0.5,
            "failure_threshold": 2,
            "recovery_threshold": 1,
            **options,
        }
        return self._add(name, port, config, [sys.executable, "-m", "rtc_server.router"])

    def _add(self, name: str, port: int, config: dict[str, Any], command: list[str]) -> Process:
        config_path = self.workdir / f"{name}.yaml"
        config_path.write_text(yaml.safe_dump(config))
        process = Process(
            name=name,
            url=f"http://{LOOPBACK}:{port}",
            port=port,
            config_path=config_path,
            command=[*command, "--config", str(config_path)],
            log_path=self.workdir / f"{name}.log",
        )
        process.start()
        self.processes.append(process)
        return process

    def close(self) -> None:
        for process in reversed(self.processes):
            process.stop()


@pytest.fixture
def cluster(tmp_path: Path, fresh_redis_url: str) -> Iterator[Cluster]:
    """A cluster on a fresh Redis database; every process it started is stopped at the end."""
    running = Cluster(tmp_path, fresh_redis_url)
    try:
        yield running
    finally:
        running.close()
