"""A real coturn ``turnserver`` on loopback, as a pytest fixture (register with ``pytest_plugins``)
and as plain functions for the benchmarks.

``turn_server`` starts one per test session, checking TURN REST credentials (``use-auth-secret``)
against a random secret, and stops it at the end. Relayed traffic stays on 127.0.0.1
(``allow-loopback-peers``, which a production coturn must never set).
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.processes import free_tcp_and_udp_port, listening, stop_process

__all__ = ["TurnServer", "start_coturn", "stop_coturn", "turn_server"]

LOOPBACK = "127.0.0.1"
REALM = "rtcvs.test"
RELAY_PORTS = (49160, 49260)  # coturn's relay range; keep server ICE ranges in tests away from it
START_TIMEOUT_S = 10.0
START_ATTEMPTS = 3


@dataclass(frozen=True)
class TurnServer:
    """A running coturn: where it listens and the shared secret it checks credentials with."""

    port: int
    secret: str
    log: Path

    @property
    def url(self) -> str:
        return f"turn:{LOOPBACK}:{self.port}?transport=udp"

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


def _ensure_turnserver() -> str:
    found = shutil.which("turnserver")
    if found:
        return found
    if os.geteuid() == 0 and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], check=False, env=env, capture_output=True)
        subprocess.run(["apt-get", "install", "-y", "-qq", "coturn"], check=False, env=env, capture_output=True)
        found = shutil.which("turnserver")
        if found:
            return found
    raise RuntimeError("turnserver is not installed (apt-get install -y coturn)")


def stop_coturn(process: subprocess.Popen[bytes]) -> None:
    """Stop a coturn started by start_coturn."""
    stop_process(process)


def start_coturn(workdir: Path, secret: str) -> tuple[subprocess.Popen[bytes], TurnServer]:
    """Start coturn on loopback checking ``use-auth-secret`` credentials; RuntimeError if it won't start."""
    binary = _ensure_turnserver()
    log = workdir / "turnserver.log"
    for _ in range(START_ATTEMPTS):
        port = free_tcp_and_udp_port(LOOPBACK)
        args = [
            binary, "-n", "--no-cli", "--no-tls", "--no-dtls", "--fingerprint",
            f"--listening-ip={LOOPBACK}", f"--relay-ip={LOOPBACK}", f"--listening-port={port}",
            "--use-auth-secret", f"--static-auth-secret={secret}", f"--realm={REALM}",
            "--allow-loopback-peers", f"--min-port={RELAY_PORTS[0]}", f"--max-port={RELAY_PORTS[1]}",
            f"--pidfile={workdir / 'turnserver.pid'}", f"--userdb={workdir / 'turndb'}",
            f"--log-file={log}", "--simple-log", "--verbose",
        ]  # fmt: skip
        process = subprocess.Popen(args, cwd=workdir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline and process.poll() is None:
            if listening(LOOPBACK, port):
                return process, TurnServer(port=port, secret=secret, log=log)
            time.sleep(0.05)
        stop_coturn(process)
    tail = log.read_text(errors="replace")[-2000:] if log.exists() else "(no log)"
    raise RuntimeError(f"turnserver did not start after {START_ATTEMPTS} attempts:\n{tail}")


@pytest.fixture(scope="session")
def turn_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TurnServer]:
    """A throwaway coturn on loopback checking ``use-auth-secret`` credentials, for the whole session."""
    try:
        process, server = start_coturn(tmp_path_factory.mktemp("coturn"), secrets.token_urlsafe(24))
    except RuntimeError as exc:
        pytest.fail(str(exc))
    try:
        yield server
    finally:
        stop_coturn(process)
