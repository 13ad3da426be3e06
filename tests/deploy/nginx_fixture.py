"""Debian's nginx on loopback, serving the real ``deploy/nginx/rtc-server.conf``.

The snippet is included as shipped, with only its placeholders swapped for what a test on loopback
needs: the server name, listen ports, certificate paths and upstream address (and, when a test asks,
other exact strings, each of which must occur in the file). Everything around it is a minimal
nginx.conf whose pid file, logs and temp paths lie in the test's directory, with the http-level
settings Debian's own nginx.conf makes.
"""

from __future__ import annotations

import os
import pwd
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.deploy.tls import Certificates
from tests.processes import free_port, listening, stop_process

__all__ = ["NGINX", "SNIPPET", "Nginx", "NginxFactory", "render_snippet", "snippet_directives"]

NGINX = Path("/usr/sbin/nginx")
SNIPPET = Path(__file__).resolve().parents[2] / "deploy" / "nginx" / "rtc-server.conf"
LOOPBACK = "127.0.0.1"
START_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 5.0
START_ATTEMPTS = 3  # a free port can be taken between probing and binding

# The placeholders of the shipped snippet, as a test on loopback fills them in.
SERVER_NAME = "server_name video.example.com;"
CERT = "/etc/letsencrypt/live/video.example.com/fullchain.pem"
KEY = "/etc/letsencrypt/live/video.example.com/privkey.pem"
LISTEN_HTTP = "listen 80;"
LISTEN_HTTPS = "listen 10.0.0.5:443 ssl;"
UPSTREAM = "server 127.0.0.1:8080;"

MAIN_CONF = """\
daemon off;
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log info;
{user}
events {{
    worker_connections 256;
}}
http {{
    # What Debian's /etc/nginx/nginx.conf sets around conf.d/*.conf.
    sendfile on;
    tcp_nopush on;
    types_hash_max_size 2048;
    include /etc/nginx/mime.types;
    default_type application/octet-stream;
    ssl_prefer_server_ciphers on;
    gzip on;

    access_log {dir}/access.log;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;

    include {dir}/rtc-server.conf;
}}
"""


@dataclass(frozen=True)
class Nginx:
    """A running nginx: its HTTPS and HTTP base URLs and its logs."""

    https_port: int
    http_port: int
    directory: Path

    @property
    def https_url(self) -> str:
        return f"https://{LOOPBACK}:{self.https_port}"

    @property
    def http_url(self) -> str:
        return f"http://{LOOPBACK}:{self.http_port}"

    @property
    def origin(self) -> str:
        """The web origin of the page served through this nginx."""
        return self.https_url

    def error_log(self) -> str:
        path = self.directory / "error.log"
        return path.read_text(errors="replace") if path.exists() else ""


def snippet_directives(text: str) -> list[str]:
    """The snippet's directives, one per line, without comments (for checks on its settings)."""
    lines = (line.split("#", 1)[0].strip() for line in text.splitlines())
    return [line for line in lines if line]


def render_snippet(
    text: str,
    *,
    https_port: int,
    http_port: int,
    upstream_port: int,
    certificates: Certificates,
    overrides: Mapping[str, str] | None = None,
) -> str:
    """The snippet with its placeholders filled in; every string replaced must occur in it."""
    replacements = {
        **(overrides or {}),
        CERT: str(certificates.cert),
        KEY: str(certificates.key),
        SERVER_NAME: f"server_name {LOOPBACK};",
        LISTEN_HTTP: f"listen {LOOPBACK}:{http_port};",
        LISTEN_HTTPS: f"listen {LOOPBACK}:{https_port} ssl;",
        UPSTREAM: f"server {LOOPBACK}:{upstream_port};",
    }
    for old, new in replacements.items():
        assert old in text, f"{SNIPPET.name} no longer contains {old!r}: update the test's substitutions"
        text = text.replace(old, new)
    leftover = [line for line in snippet_directives(text) if "example.com" in line]
    assert not leftover, f"placeholders left in the rendered snippet: {leftover}"
    return text


def _main_conf(directory: Path) -> str:
    # As root, nginx's workers would run as "nobody", which cannot enter pytest's 0700 temp dirs.
    user = f"user {pwd.getpwuid(os.geteuid()).pw_name};" if os.geteuid() == 0 else ""
    return MAIN_CONF.format(dir=directory, user=user)


class NginxFactory:
    """Starts nginx instances in front of upstream servers; stops them all in ``close()``."""

    def __init__(self, root: Path, certificates: Certificates) -> None:
        self._root = root
        self._certificates = certificates
        self._processes: list[subprocess.Popen[bytes]] = []

    def start(self, upstream_port: int, *, overrides: Mapping[str, str] | None = None) -> Nginx:
        """nginx proxying to ``127.0.0.1:upstream_port`` with the shipped snippet (plus ``overrides``)."""
        assert NGINX.exists(), f"{NGINX} is missing (apt-get install nginx; scripts/test.sh does)"
        directory = self._root / f"nginx{len(self._processes)}"
        directory.mkdir()
        snippet = SNIPPET.read_text()
        (directory / "nginx.conf").write_text(_main_conf(directory))
        for _ in range(START_ATTEMPTS):
            https_port, http_port = free_port(LOOPBACK), free_port(LOOPBACK)
            rendered = render_snippet(
                snippet,
                https_port=https_port,
                http_port=http_port,
                upstream_port=upstream_port,
                certificates=self._certificates,
                overrides=overrides,
            )
            (directory / "rtc-server.conf").write_text(rendered)
            command = [str(NGINX), "-p", str(directory), "-c", str(directory / "nginx.conf")]
            checked = subprocess.run([*command, "-t"], check=False, capture_output=True, text=True, timeout=30)
            assert checked.returncode == 0, f"nginx -t refused the snippet:\n{checked.stderr}"
            with (directory / "stderr.log").open("ab") as stderr:
                process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=stderr)
            self._processes.append(process)
            deadline = time.monotonic() + START_TIMEOUT_S
            while time.monotonic() < deadline and process.poll() is None:
                if listening(LOOPBACK, https_port) and listening(LOOPBACK, http_port):
                    return Nginx(https_port=https_port, http_port=http_port, directory=directory)
                time.sleep(0.02)
            stop_process(process, STOP_TIMEOUT_S)
        log = (directory / "error.log").read_text(errors="replace") if (directory / "error.log").exists() else ""
        pytest.fail(f"nginx did not start after {START_ATTEMPTS} attempts:\n{log[-2000:]}")

    def close(self) -> None:
        for process in reversed(self._processes):
            stop_process(process, STOP_TIMEOUT_S)
