"""The page in Debian's Chromium through the whole deployment: nginx with the shipped snippet in
front of the server, coturn with the shipped config for ``?relay=1``. The checklist's browser steps.

Chromium trusts the test certificate by its public key (``--ignore-certificate-errors-spki-list``),
so the page is a secure context over verified-by-pin TLS, as with a real CA.
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import AsyncIterator
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from tests.conftest import RunningServer, make_config
from tests.deploy.coturn_fixture import DeployedTurn
from tests.deploy.nginx_fixture import NginxFactory
from tests.deploy.tls import Certificates
from tests.web_client.pagekit import (
    CHROMIUM,
    CHROMIUM_ARGS,
    SEGMENT_S,
    WEBRTC_ARGS,
    PageLog,
    playwright_api,
    wait_for_playback,
    wait_until,
)

pytestmark = pytest.mark.slow

SECRET_ENV = "RTCVS_TEST_DEPLOY_TURN_SECRET"
TOKEN_ENV = "RTCVS_TEST_DEPLOY_TOKEN"
TOKEN = "deploy-test-token-0123456789"


def spki_pin(certificates: Certificates) -> str:
    """base64(SHA-256(SubjectPublicKeyInfo)) of the server certificate, as Chromium's flag wants it."""
    cert = x509.load_pem_x509_certificates(certificates.cert.read_bytes())[0]
    der = cert.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(hashlib.sha256(der).digest()).decode()


@pytest.fixture
async def browser(certificates: Certificates) -> AsyncIterator[Any]:
    assert playwright_api is not None, "playwright is not installed (pip install -e '.[test]')"
    assert CHROMIUM.exists(), f"{CHROMIUM} is missing (apt-get install chromium)"
    pin = f"--ignore-certificate-errors-spki-list={spki_pin(certificates)}"
    async with playwright_api.async_playwright() as playwright:
        chromium = await playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=[*CHROMIUM_ARGS, *WEBRTC_ARGS, pin]
        )
        try:
            yield chromium
        finally:
            await chromium.close()


@pytest.fixture
async def deployment(
    deployed_turn: DeployedTurn, start_server: Any, nginx: NginxFactory, monkeypatch: pytest.MonkeyPatch
) -> tuple[str, DeployedTurn]:
    """The page's HTTPS URL through nginx, and the coturn its TURN credentials are for."""
    monkeypatch.setenv(SECRET_ENV, deployed_turn.secret)
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    turn = {"urls": deployed_turn.urls, "secret_env": SECRET_ENV, "ttl_seconds": 600}
    config = make_config(auth={"mode": "token", "token_envs": [TOKEN_ENV]}, webrtc={"turn": turn})
    server: RunningServer = await start_server(config)
    proxy = nginx.start(int(server.url.rsplit(":", 1)[1]))
    return proxy.https_url, deployed_turn


async def open_page(browser: Any, url: str) -> tuple[Any, PageLog, list[Any]]:
    """The page at ``url``, its log, and the responses of its GET /v1/webrtc/ice-servers."""
    page = await browser.new_page()
    log = PageLog()
    log.attach(page)
    ice: list[Any] = []
    page.on("response", lambda r: ice.append(r) if r.url.endswith("/v1/webrtc/ice-servers") else None)
    await page.goto(url)
    return page, log, ice


async def test_the_page_plays_relay_only_through_nginx_and_coturn(browser: Any, deployment: tuple[str, Any]) -> None:
    base, turn = deployment
    page, log, ice = await open_page(browser, f"{base}/?relay=1#token={TOKEN}")
    state = await wait_for_playback(page, log, SEGMENT_S)
    assert state["transport"] == "webrtc" and state["statusState"] == "ok", f"{state}\n{log}"
    assert await page.evaluate("() => window.isSecureContext")
    # The overlay's path row, as the guide's checklist reads it.
    await wait_until(page, log, "() => document.getElementById('stat-path').dataset.local === 'relay'")
    title = await page.evaluate("() => document.getElementById('stat-path').title")
    assert "through a TURN server (udp to it)" in title, title
    # coturn allocated for the credentials nginx handed this page.
    assert ice and ice[0].status == 200
    username = (await ice[0].json())["ice_servers"][0]["username"]
    pattern = rf"user <{re.escape(username)}>: incoming packet ALLOCATE processed, success"
    assert re.search(pattern, turn.log_text()), turn.log_text()[-2000:]
    assert log.page_errors == []
    await page.close()


async def test_the_page_plays_over_the_websocket_through_nginx(browser: Any, deployment: tuple[str, Any]) -> None:
    base, _ = deployment
    page, log, _ = await open_page(browser, f"{base}/?transport=ws#token={TOKEN}")
    state = await wait_for_playback(page, log, SEGMENT_S)
    assert state["transport"] == "ws" and state["statusState"] == "ok", f"{state}\n{log}"
    assert log.page_errors == []
    await page.close()
