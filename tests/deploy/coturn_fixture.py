"""Debian's coturn started with the real ``deploy/coturn/turnserver.conf``, on loopback.

The config is used as shipped, with its placeholders filled in for a test on one machine, keeping
its layout of two addresses: coturn's own (10.0.0.6, here 127.0.0.2) and the GPU VM's, where
rtc-server's ICE sockets are (10.0.0.5, here 127.0.0.1). Also filled in: the secret, the listen and
relay ports, the certificate paths, and a log file instead of syslog. Two things are test
overrides, and only these: the ``external-ip`` line is dropped (no NAT on loopback: relay
candidates must carry 127.0.0.2, not the example public address), and ``allow-loopback-peers`` is
added, because coturn refuses loopback peers before it looks at ``allowed-peer-ip``. The config's
own ``allowed-peer-ip`` (the GPU VM's address) is then what admits the server, while its
``denied-peer-ip=127.0.0.0-127.255.255.255`` still refuses the rest of 127/8.
"""

from __future__ import annotations

import secrets
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.deploy.tls import Certificates
from tests.processes import free_tcp_and_udp_port, listening, stop_process

__all__ = ["CONFIG", "SERVER_ADDRESS", "TURN_ADDRESS", "DeployedTurn", "render_config", "start_coturn", "stop_coturn"]

CONFIG = Path(__file__).resolve().parents[2] / "deploy" / "coturn" / "turnserver.conf"
TURN_ADDRESS = "127.0.0.2"  # coturn's own address (10.0.0.6 in the shipped config)
SERVER_ADDRESS = "127.0.0.1"  # the GPU VM's address, where rtc-server's ICE sockets are (10.0.0.5)
SECRET_PLACEHOLDER = "REPLACE_WITH_OUTPUT_OF_openssl_rand_hex_32"
# Relay ports for this test: away from tests/turn_fixture.py's 49160-49260 and the ephemeral range.
RELAY_PORTS = (49400, 49499)
START_TIMEOUT_S = 10.0
START_ATTEMPTS = 3


@dataclass(frozen=True)
class DeployedTurn:
    """A coturn running the shipped config: its ports, secret, realm and log."""

    host: str
    port: int  # UDP and TCP
    tls_port: int
    secret: str
    realm: str
    log: Path

    @property
    def urls(self) -> list[str]:
        """The three URLs docs/deploying.md puts in webrtc.turn.urls, on loopback."""
        return [
            f"turn:{self.host}:{self.port}?transport=udp",
            f"turn:{self.host}:{self.port}?transport=tcp",
            f"turns:{self.host}:{self.tls_port}?transport=tcp",
        ]

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


def _setting(text: str, name: str) -> str:
    (value,) = [line.split("=", 1)[1] for line in text.splitlines() if line.startswith(f"{name}=")]
    return value


def render_config(
    text: str, *, port: int, tls_port: int, secret: str, certificates: Certificates, directory: Path
) -> str:
    """The shipped config with its placeholders filled in for loopback (see the module docstring)."""
    replacements = {
        f"external-ip={_setting(text, 'external-ip')}\n": "# external-ip: no NAT on loopback (test override)\n",
        "listening-port=3478": f"listening-port={port}",
        "tls-listening-port=443": f"tls-listening-port={tls_port}",
        "listening-ip=10.0.0.6": f"listening-ip={TURN_ADDRESS}",
        "relay-ip=10.0.0.6": f"relay-ip={TURN_ADDRESS}",
        "allowed-peer-ip=10.0.0.5": f"allowed-peer-ip={SERVER_ADDRESS}",
        "min-port=49152": f"min-port={RELAY_PORTS[0]}",
        "max-port=65535": f"max-port={RELAY_PORTS[1]}",
        SECRET_PLACEHOLDER: secret,
        f"cert={_setting(text, 'cert')}": f"cert={certificates.cert}",
        f"pkey={_setting(text, 'pkey')}": f"pkey={certificates.key}",
        "\nsyslog\n": f"\nlog-file={directory / 'turnserver.log'}\nsimple-log\n",
    }
    for old, new in replacements.items():
        assert old in text, f"{CONFIG.name} no longer contains {old!r}: update the test's substitutions"
        text = text.replace(old, new)
    test_only = [
        "allow-loopback-peers",  # see the module docstring; production must never set it
        f"pidfile={directory / 'turnserver.pid'}",
        f"userdb={directory / 'turndb'}",  # not /var/lib/turn: unused with use-auth-secret, but opened
    ]
    return text + "\n# --- test overrides ---\n" + "\n".join(test_only) + "\n"


def stop_coturn(process: subprocess.Popen[bytes]) -> None:
    stop_process(process)


def start_coturn(directory: Path, certificates: Certificates) -> tuple[subprocess.Popen[bytes], DeployedTurn]:
    """turnserver -c <the rendered shipped config>, once it listens on both of its TCP ports."""
    binary = shutil.which("turnserver")
    if binary is None:
        pytest.fail("turnserver is not installed (apt-get install coturn; scripts/test.sh does)")
    shipped = CONFIG.read_text()
    secret = secrets.token_hex(32)  # as docs/deploying.md makes it: openssl rand -hex 32
    for _ in range(START_ATTEMPTS):
        port, tls_port = free_tcp_and_udp_port(TURN_ADDRESS), free_tcp_and_udp_port(TURN_ADDRESS)
        config = directory / "turnserver.conf"
        config.write_text(
            render_config(
                shipped, port=port, tls_port=tls_port, secret=secret, certificates=certificates, directory=directory
            )
        )
        turn = DeployedTurn(
            host=TURN_ADDRESS,
            port=port,
            tls_port=tls_port,
            secret=secret,
            realm=_setting(shipped, "realm"),
            log=directory / "turnserver.log",
        )
        process = subprocess.Popen(
            [binary, "-c", str(config)], cwd=directory, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline and process.poll() is None:
            if listening(TURN_ADDRESS, port) and listening(TURN_ADDRESS, tls_port):
                return process, turn
            time.sleep(0.05)
        stop_coturn(process)
    pytest.fail(f"turnserver did not start after {START_ATTEMPTS} attempts:\n{turn.log_text()[-2000:]}")
