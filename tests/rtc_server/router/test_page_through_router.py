"""The page served by the router, in Debian's Chromium: it plays over both transports, talking to the
router as to a server (same-origin offers and sockets, relayed to a replica)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from rtc_server.app import REGISTRY
from tests.conftest import RunningServer
from tests.rtc_server.router.conftest import StartRouter
from tests.web_client.conftest import launch  # noqa: F401 - the browser fixture
from tests.web_client.pagekit import SAMPLING, SEGMENT_S, WEBRTC_ARGS, open_page, wait_for_playback

pytestmark = pytest.mark.slow


@pytest.mark.parametrize(("transport", "text"), [("webrtc", "WebRTC"), ("ws", "WebSocket · MSE")])
async def test_the_routers_page_plays_through_the_router(
    replicas: tuple[RunningServer, RunningServer],
    start_router: StartRouter,
    launch: Callable[..., Any],  # noqa: F811 - the fixture imported above
    transport: str,
    text: str,
) -> None:
    primary, secondary = replicas
    router = await start_router([primary.url, secondary.url])
    browser = await launch(*WEBRTC_ARGS)
    page, log = await open_page(browser, f"{router.url}/?transport={transport}")
    state = await wait_for_playback(page, log, 2 * SEGMENT_S)
    assert state["error"] is None and state["statusState"] != "error", f"{state}\n{log}"
    assert state["transport"] == transport and state["transportText"].startswith(text), state
    assert (state["width"], state["height"]) == (SAMPLING.width, SAMPLING.height)
    assert len(primary.app[REGISTRY]) == 1 and len(secondary.app[REGISTRY]) == 0  # placed on the primary
    routed_as = "websocket" if transport == "ws" else "webrtc"
    assert router.metric("rtcvs_router_sessions_routed_total", transport=routed_as) == 1
