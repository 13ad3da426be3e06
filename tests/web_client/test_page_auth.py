"""The page with an access token, in Debian's Chromium against a real server with token auth.

The page takes its token from ``#token=`` (and removes it from the address bar), keeps it for
reloads of the tab, or reads ``client-config.json``; every offer carries ``Authorization: Bearer``
and the WebSocket offers the subprotocols ``["rtcvs", "bearer.<token>"]``. Without a token, or with
a refused one, the page says it is not authorized and offers no Retry; a 429 names the wait.
"""

from __future__ import annotations

import asyncio
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from rtc_server.app import DEFAULT_WEB_CLIENT_DIR, REGISTRY
from rtc_server.config import ServiceConfig
from tests.conftest import RunningServer, make_config
from tests.web_client.pagekit import (
    ARTIFACTS,
    SEGMENT_S,
    WEBRTC_ARGS,
    new_page,
    page_state,
    wait_for_playback,
    wait_until,
)

pytestmark = pytest.mark.slow

TOKEN_ENV = "RTCVS_TEST_TOKEN"
GOOD_TOKEN = "page-test-token-0123456789"
STORAGE_KEY = "live-video.token.v1"
ERROR_STATE_JS = "() => document.getElementById('status').dataset.state === 'error'"


def token_config(**sections: dict[str, Any]) -> ServiceConfig:
    return make_config(auth={"mode": "token", "token_envs": [TOKEN_ENV]}, **sections)


def record_offers(page: Any, path: str = "/v1/webrtc/offer") -> list[dict[str, str]]:
    """Headers of every request the page makes to ``path`` (the offer by default), in order."""
    offers: list[dict[str, str]] = []
    page.on(
        "request",
        lambda request: offers.append(request.headers) if request.url.endswith(path) else None,
    )
    return offers


async def address_and_storage(page: Any) -> dict[str, Any]:
    return dict(
        await page.evaluate(
            """(key) => ({href: location.href, stored: sessionStorage.getItem(key),
                        token: window.liveClient.app.token, source: window.liveClient.app.tokenSource})""",
            STORAGE_KEY,
        )
    )


async def test_auth_module_parses_the_fragment_and_builds_credentials(
    start_server: Callable[..., Any], launch: Callable[..., Any]
) -> None:
    server: RunningServer = await start_server(make_config())
    browser = await launch()
    page, log = await new_page(browser)
    await page.goto(f"{server.url}/healthz")  # any page of the origin; no session is opened
    result = await page.evaluate(
        """async () => {
            const a = await import("/client/auth.js");
            return {
                fragments: ["#token=abc", "#token=a%2Fb%3D%3D+c&x=1", "#x=1&token=&y=2", "", "#token=%E0%A4%A"]
                    .map((hash) => a.tokenFromFragment(hash)),
                headers: [a.authHeaders("t0k", {"Content-Type": "application/json"}), a.authHeaders(null)],
                sockets: [
                    a.webSocketAuth("ws://h:1/v1/stream", "eyJhbGciOi.J9.x-_y"),
                    a.webSocketAuth("ws://h:1/v1/stream", "has space/slash"),
                    a.webSocketAuth("ws://h:1/v1/stream", null),
                ],
            };
        }"""
    )
    assert result["fragments"] == [
        {"token": "abc", "rest": ""},
        {"token": "a/b==+c", "rest": "x=1"},  # URL-decoded; "+" stays "+"
        {"token": None, "rest": "x=1&y=2"},
        {"token": None, "rest": ""},
        {"token": "%E0%A4%A", "rest": ""},  # not valid percent-encoding: taken as written
    ]
    assert result["headers"] == [
        {"Content-Type": "application/json", "Authorization": "Bearer t0k"},
        {},
    ]
    jwt_like, unsafe, none = result["sockets"]
    assert jwt_like == {
        "url": "ws://h:1/v1/stream",
        "protocols": ["rtcvs", "bearer.eyJhbGciOi.J9.x-_y"],
    }
    # Not a valid subprotocol value: the query string instead (new WebSocket would throw).
    assert unsafe["url"] == "ws://h:1/v1/stream?token=has+space%2Fslash", unsafe
    assert "protocols" not in unsafe or unsafe["protocols"] is None
    assert none["url"] == "ws://h:1/v1/stream" and none.get("protocols") is None
    assert log.page_errors == []
    await page.close()


async def test_page_with_a_token_streams_over_both_transports_and_hides_it(
    start_server: Callable[..., Any],
    launch: Callable[..., Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(TOKEN_ENV, GOOD_TOKEN)
    server: RunningServer = await start_server(token_config())
    browser = await launch(*WEBRTC_ARGS)

    # WebRTC: the offer carries the bearer token; the fragment is gone from the address.
    page, log = await new_page(browser)
    offers = record_offers(page)
    ice_requests = record_offers(page, "/v1/webrtc/ice-servers")
    await page.goto(f"{server.url}/#token={GOOD_TOKEN}")
    state = await wait_for_playback(page, log, SEGMENT_S)
    assert state["transport"] == "webrtc" and state["statusState"] == "ok", f"{state}\n{log}"
    assert offers and offers[-1].get("authorization") == f"Bearer {GOOD_TOKEN}", offers
    assert ice_requests and ice_requests[-1].get("authorization") == f"Bearer {GOOD_TOKEN}", ice_requests
    seen = await address_and_storage(page)
    assert seen["href"] == f"{server.url}/", seen
    assert GOOD_TOKEN not in seen["href"] and "#" not in seen["href"], seen
    assert seen["stored"] == GOOD_TOKEN and seen["source"] == "fragment", seen

    # A reload of the tab keeps working: the token comes from sessionStorage.
    await page.reload()
    state = await wait_for_playback(page, log, SEGMENT_S)
    assert state["statusState"] == "ok", f"{state}\n{log}"
    seen = await address_and_storage(page)
    assert seen["source"] == "session" and seen["token"] == GOOD_TOKEN, seen

    # Stop ends the session on the server: DELETE /v1/sessions/{id} carries the token too.
    # expect_response, not a "response" listener: Playwright may deliver that event after the page
    # already shows "stopped", and the registry may be empty by then too.
    async with page.expect_response(lambda r: r.request.method == "DELETE") as deleted:
        await page.click("#stop")
    delete = await deleted.value
    assert delete.request.headers.get("authorization") == f"Bearer {GOOD_TOKEN}", delete.request.headers
    await wait_until(page, log, "() => document.getElementById('status').textContent === 'stopped'")
    for _ in range(50):
        if len(server.app[REGISTRY]) == 0:
            break
        await asyncio.sleep(0.05)
    assert len(server.app[REGISTRY]) == 0, "the page's DELETE did not end its session"
    assert delete.status == 200, delete.status
    assert log.page_errors == [], str(log)
    await page.close()

    # WebSocket/MSE: the token goes as a subprotocol, never in the socket's URL.
    page, log = await new_page(browser)
    sockets: list[str] = []
    page.on("websocket", lambda ws: sockets.append(ws.url))
    await page.goto(f"{server.url}/?transport=ws#token={GOOD_TOKEN}")
    state = await wait_for_playback(page, log, 2 * SEGMENT_S)
    assert state["transport"] == "ws" and state["statusState"] == "ok", f"{state}\n{log}"
    assert sockets and all(GOOD_TOKEN not in url for url in sockets), sockets
    protocol = await page.evaluate("() => window.liveClient.app.session.transport.ws.protocol")
    assert protocol == "rtcvs", protocol
    seen = await address_and_storage(page)
    assert seen["href"] == f"{server.url}/?transport=ws", seen
    assert log.problems() == [], str(log)
    await page.close()


async def unauthorized_notice(page: Any, log: Any) -> str:
    """Waits for the error; checks it is the unauthorized one, without Retry or Restart; its text."""
    await wait_until(page, log, ERROR_STATE_JS)
    notice = page.locator('#notices .notice[data-code="unauthorized"]')
    await notice.first.wait_for(timeout=5000)
    assert await notice.count() == 1, await page_state(page)
    text = await notice.inner_text()
    assert "Not authorized: this page needs a valid access token" in text, text
    assert "#token=" in text, text  # says how to get in
    assert await notice.locator('button[data-action="retry"]').count() == 0
    assert await notice.locator('button[data-action="restart"]').count() == 0
    assert await notice.get_attribute("role") == "alert"
    status = await page.text_content("#status")
    assert status is not None and status.startswith("Not authorized"), status
    return text


async def test_page_without_a_valid_token_says_it_is_not_authorized(
    start_server: Callable[..., Any],
    launch: Callable[..., Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(TOKEN_ENV, GOOD_TOKEN)
    server: RunningServer = await start_server(token_config())
    browser = await launch(*WEBRTC_ARGS)

    # No token at all (client-config.json ships as {}): the ICE-servers request, the first one, is
    # answered 401; the page says so and sends no offer (it would be refused the same), no fallback.
    page, log = await new_page(browser)
    offers = record_offers(page)
    ice_requests = record_offers(page, "/v1/webrtc/ice-servers")
    await page.goto(f"{server.url}/")
    text = await unauthorized_notice(page, log)
    assert "HTTP 401" in text, text
    state = await page_state(page)
    assert state["transport"] == "webrtc", state  # the WebSocket would be refused the same way
    assert len(ice_requests) == 1 and "authorization" not in ice_requests[0], ice_requests
    assert offers == [], offers
    assert state["badge"] == "not authorized", state
    ARTIFACTS.mkdir(exist_ok=True)
    await page.screenshot(path=str(ARTIFACTS / "page_unauthorized.png"))
    await page.close()

    # A wrong token over the WebSocket: error{unauthorized} then close 4401; the stored token is dropped.
    page, log = await new_page(browser)
    await page.goto(f"{server.url}/?transport=ws#token=not-the-token")
    text = await unauthorized_notice(page, log)
    assert "4401" in text, text
    seen = await address_and_storage(page)
    assert seen["stored"] is None and "#" not in seen["href"], seen
    await page.close()


async def test_page_takes_the_token_from_client_config(
    start_server: Callable[..., Any],
    launch: Callable[..., Any],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    monkeypatch.setenv(TOKEN_ENV, GOOD_TOKEN)
    web_dir = tmp_path / "web_client"
    shutil.copytree(DEFAULT_WEB_CLIENT_DIR, web_dir)
    (web_dir / "client-config.json").write_text(json.dumps({"token": GOOD_TOKEN}))
    server: RunningServer = await start_server(token_config(server={"web_client_dir": str(web_dir)}))
    browser = await launch(*WEBRTC_ARGS)
    page, log = await new_page(browser)
    offers = record_offers(page)
    await page.goto(f"{server.url}/")
    state = await wait_for_playback(page, log, SEGMENT_S)
    assert state["statusState"] == "ok", f"{state}\n{log}"
    assert offers and offers[-1].get("authorization") == f"Bearer {GOOD_TOKEN}", offers
    seen = await address_and_storage(page)
    assert seen["source"] == "client-config" and seen["stored"] is None, seen
    assert log.page_errors == [], str(log)
    await page.close()


async def test_too_many_requests_names_the_wait_and_offers_retry(
    start_server: Callable[..., Any], launch: Callable[..., Any]
) -> None:
    # One offer a minute for this client: the page's first session plays, the reload's offer is refused.
    server: RunningServer = await start_server(make_config(limits={"offers_per_minute": 1}))
    browser = await launch(*WEBRTC_ARGS)
    page, log = await new_page(browser)
    await page.goto(f"{server.url}/")
    state = await wait_for_playback(page, log, SEGMENT_S)
    assert state["statusState"] == "ok", f"{state}\n{log}"
    statuses: list[int] = []
    page.on("response", lambda r: statuses.append(r.status) if r.url.endswith("/v1/webrtc/offer") else None)
    await page.reload()
    await wait_until(page, log, ERROR_STATE_JS)
    notice = page.locator('#notices .notice[data-code="rate_limited"]')
    text = await notice.inner_text()
    assert statuses == [429], statuses
    assert "Too many requests" in text and "HTTP 429" in text, text
    assert "retrying in" in text, text  # the server's Retry-After, in words
    # The first page's session went with its page; the refused offer never made one.
    for _ in range(100):
        if len(server.app[REGISTRY]) == 0:
            break
        await asyncio.sleep(0.05)
    assert len(server.app[REGISTRY]) == 0
    assert log.page_errors == [], str(log)
    await page.close()
