"""Fixtures for the prompt package: a chat-completions server on loopback, an httpx client, a trained model."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from aiohttp.test_utils import TestServer

from prompt.providers import create_http_client
from prompt.safety import DEFAULT_DATA_PATH, train_classifier
from tests.prompt.chat_server import ChatServer

LOOPBACK = "127.0.0.1"


@pytest.fixture
async def chat_server() -> AsyncIterator[ChatServer]:
    """A started chat-completions server; slow replies are released and the server closed afterwards."""
    chat = ChatServer()
    server = TestServer(chat.app(), host=LOOPBACK, port=0)
    await server.start_server()
    chat.url = str(server.make_url("")).rstrip("/")
    try:
        yield chat
    finally:
        chat.release.set()
        await server.close()


@pytest.fixture
async def http_client() -> AsyncIterator[httpx.AsyncClient]:
    """The shared provider client as the server would build it, ignoring any proxy settings of the host."""
    client = create_http_client(timeout_s=5.0, trust_env=False)
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture
def closed_port_url() -> str:
    """A loopback base URL nobody listens on (connection refused)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        port = sock.getsockname()[1]
    return f"http://{LOOPBACK}:{port}/v1"


@pytest.fixture(scope="session")
def trained_model(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A classifier trained once per session from the shipped data."""
    path = tmp_path_factory.mktemp("safety") / "model.bin"
    train_classifier(DEFAULT_DATA_PATH, path)
    yield path
