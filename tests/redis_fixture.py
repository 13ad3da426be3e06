"""Pytest fixtures for a real ``redis-server`` on loopback (register with ``pytest_plugins``).

``redis_url`` starts one throwaway server per test session (no persistence, bound to 127.0.0.1 on a
free port) and stops it at the end; ``fresh_redis_url`` empties its database before each test.
Talks RESP over a plain socket, so importing this module does not need redis-py.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

__all__ = ["fresh_redis_url", "redis_url"]

REDIS_SERVER = "/usr/bin/redis-server"
LOOPBACK = "127.0.0.1"
START_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 5.0
START_ATTEMPTS = 3  # a free port can be taken between probing and binding


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def _command(port: int, *args: str, timeout_s: float = 1.0) -> bytes:
    """Send one RESP command and return the first reply line (e.g. ``b"+PONG"``)."""
    request = f"*{len(args)}\r\n".encode() + b"".join(
        f"${len(arg.encode())}\r\n".encode() + arg.encode() + b"\r\n" for arg in args
    )
    with socket.create_connection((LOOPBACK, port), timeout=timeout_s) as sock:
        sock.sendall(request)
        reply = b""
        while not reply.endswith(b"\r\n"):
            chunk = sock.recv(4096)
            if not chunk:
                break
            reply += chunk
    return reply.split(b"\r\n", 1)[0]


def _ensure_redis_server() -> str:
    """Path to redis-server, installing the Debian package when it is missing and we may."""
    found = shutil.which("redis-server") or (REDIS_SERVER if os.path.exists(REDIS_SERVER) else None)
    if found:
        return found
    if os.geteuid() == 0 and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], check=False, env=env, capture_output=True)
        subprocess.run(
            ["apt-get", "install", "-y", "-qq", "redis-server"], check=False, env=env, capture_output=True
        )
        found = shutil.which("redis-server") or (REDIS_SERVER if os.path.exists(REDIS_SERVER) else None)
        if found:
            return found
    pytest.fail("redis-server is not installed (apt-get install -y redis-server)")


def _wait_for_ping(process: subprocess.Popen[bytes], port: int) -> bool:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return False
        try:
            if _command(port, "PING") == b"+PONG":
                return True
        except OSError:
            pass
        time.sleep(0.02)
    return False


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _start(binary: str, workdir: Path) -> tuple[subprocess.Popen[bytes], int]:
    log = workdir / "redis.log"
    for _ in range(START_ATTEMPTS):
        port = _free_port()
        args = [binary, "--save", "", "--appendonly", "no", "--port", str(port), "--bind", LOOPBACK]
        args += ["--dir", str(workdir), "--logfile", str(log), "--daemonize", "no"]
        process = subprocess.Popen(args, cwd=workdir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if _wait_for_ping(process, port):
            return process, port
        _stop(process)
    tail = log.read_text(errors="replace")[-2000:] if log.exists() else "(no log)"
    pytest.fail(f"redis-server did not answer PING after {START_ATTEMPTS} attempts:\n{tail}")


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """URL of a throwaway redis-server on loopback, running for the whole test session."""
    binary = _ensure_redis_server()
    process, port = _start(binary, tmp_path_factory.mktemp("redis"))
    try:
        yield f"redis://{LOOPBACK}:{port}/0"
    finally:
        _stop(process)


@pytest.fixture
def fresh_redis_url(redis_url: str) -> str:
    """``redis_url`` with database 0 emptied first."""
    port = int(redis_url.rsplit(":", 1)[1].split("/", 1)[0])
    reply = _command(port, "FLUSHDB")
    if reply != b"+OK":
        pytest.fail(f"FLUSHDB on {redis_url} answered {reply!r}")
    return redis_url
