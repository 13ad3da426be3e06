"""Fixtures for the deployment files: a test CA, nginx with the shipped snippet, coturn with the shipped config."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.deploy.coturn_fixture import DeployedTurn, start_coturn, stop_coturn
from tests.deploy.nginx_fixture import NginxFactory
from tests.deploy.tls import Certificates, make_certificates


@pytest.fixture(scope="session")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    """A test CA and a certificate for 127.0.0.1 signed by it, standing in for a real CA's."""
    return make_certificates(tmp_path_factory.mktemp("tls"))


@pytest.fixture
def nginx(tmp_path: Path, certificates: Certificates) -> Iterator[NginxFactory]:
    """Start nginx in front of a server with ``nginx.start(upstream_port)``; stopped at the end of the test."""
    factory = NginxFactory(tmp_path, certificates)
    try:
        yield factory
    finally:
        factory.close()


@pytest.fixture(scope="session")
def deployed_turn(tmp_path_factory: pytest.TempPathFactory, certificates: Certificates) -> Iterator[DeployedTurn]:
    """coturn running the shipped deploy/coturn/turnserver.conf on loopback, for the whole session."""
    process, turn = start_coturn(tmp_path_factory.mktemp("coturn"), certificates)
    try:
        yield turn
    finally:
        stop_coturn(process)
