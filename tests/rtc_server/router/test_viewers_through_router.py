"""A session's viewers through a real router: WHEP, the fMP4 watch socket and recordings, on loopback."""

from __future__ import annotations

import asyncio
import base64
import os
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from redis.asyncio import Redis

from rtc_server.app import REGISTRY
from rtc_server.clients.watch_client import WatchClient
from rtc_server.clients.webrtc_client import OfferRejected, WebRTCClient
from rtc_server.clients.whep_client import WhepClient
from rtc_server.clients.ws_client import WebSocketClient
from tests.rtc_server.router.conftest import INIT, StartRouter, map_key, replica_config, wait_until

FINALISE_TIMEOUT_S = 30.0


def upgrade_headers() -> dict[str, str]:
    """A WebSocket upgrade made by hand, so a refusal's body can be read."""
    return {
        "Connection": "Upgrade",
        "Upgrade": "websocket",
        "Sec-WebSocket-Version": "13",
        "Sec-WebSocket-Key": base64.b64encode(os.urandom(16)).decode(),
    }


async def test_whep_and_fmp4_viewers_of_a_webrtc_owner_through_the_router(
    start_server: Any, start_router: StartRouter, fresh_redis_url: str, redis_client: Redis
) -> None:
    # One viewer at a time, so that a second one is refused as full.
    primary = await start_server(replica_config(streaming={"viewers": {"max_per_session": 1}}))
    secondary = await start_server(replica_config())
    router = await start_router([primary.url, secondary.url], redis_url=fresh_redis_url)
    async with WebRTCClient(router.url, session_init=INIT) as owner:
        await owner.connect()
        info = await owner.wait_for_event("session_info", timeout=20)
        sid, token = info["session_id"], info["watch_token"]
        assert primary.app[REGISTRY].get(sid) is not None
        await wait_until(lambda: owner.frame_count > 0, 20, "the owner got no frames")

        async with WhepClient(router.url, sid, token) as viewer:
            location = await viewer.connect()
            assert location.startswith(f"{router.url}/v1/sessions/{sid}/whep/")  # back through the router
            await wait_until(lambda: viewer.frame_count >= 12, 20, "the WHEP viewer got no frames through the router")
            assert await viewer.leave() == 200
            assert await viewer.leave() == 404  # gone: a WHEP 404 ...
        assert await redis_client.get(map_key(sid)) == primary.url.encode()  # ... leaves the session's entry

        with pytest.raises(OfferRejected) as refused:
            async with WhepClient(router.url, sid, "not-the-token") as bad:
                await bad.connect()
        assert refused.value.status == 401 and refused.value.body["error"]["code"] == "unauthorized"
        assert await redis_client.get(map_key(sid)) == primary.url.encode()

        async with aiohttp.ClientSession() as http:
            preflight = {"Origin": router.url, "Access-Control-Request-Method": "POST"}
            async with http.options(f"{router.url}/v1/sessions/{sid}/whep", headers=preflight) as response:
                assert response.status == 204
            # The viewer's ICE servers, for its watch token, from the holding replica.
            ice = f"{router.url}/v1/sessions/{sid}/ice-servers"
            async with http.get(ice, headers={"Authorization": f"Bearer {token}"}) as response:
                assert response.status == 200 and "ice_servers" in await response.json()
            async with http.get(ice, headers={"Authorization": "Bearer wrong"}) as response:
                assert response.status == 401
            # The watch socket's refusal before the upgrade: the replica's status and JSON body.
            async with http.get(f"{router.url}/v1/sessions/{sid}/watch?token=wrong", headers=upgrade_headers()) as response:
                assert response.status == 401 and (await response.json())["error"]["code"] == "unauthorized"
            async with http.get(f"{router.url}/v1/sessions/nope/watch?token=x", headers=upgrade_headers()) as response:
                assert response.status == 404 and (await response.json())["error"]["code"] == "invalid_message"

        # A session the map lost is still found: the replicas are asked in turn (and the entry comes back).
        await redis_client.delete(map_key(sid))
        watcher = WatchClient(router.url, session_id=sid, watch_token=token)
        try:
            await watcher.watch()
            await watcher.wait_for_event("media_segment_complete", timeout=20)
            segment = watcher.complete_segments[0]
            assert segment.init[4:8] == b"ftyp" and segment.chunks
            async with aiohttp.ClientSession() as http:
                url = f"{router.url}/v1/sessions/{sid}/watch?token={token}"
                async with http.get(url, headers=upgrade_headers()) as response:
                    assert response.status == 503 and response.headers["Retry-After"]
                    assert (await response.json())["error"]["code"] == "session_rejected"
        finally:
            await watcher.close()
        assert await redis_client.get(map_key(sid)) == primary.url.encode()


async def get(url: str, **kwargs: Any) -> tuple[int, dict[str, str], bytes]:
    async with aiohttp.ClientSession() as http, http.get(url, **kwargs) as response:
        return response.status, dict(response.headers), await response.read()


async def ready_recordings(base_url: str, sid: str, token: str) -> list[dict[str, Any]]:
    deadline = asyncio.get_running_loop().time() + FINALISE_TIMEOUT_S
    while True:
        async with aiohttp.ClientSession() as http, http.get(
            f"{base_url}/v1/sessions/{sid}/recording", params={"token": token}
        ) as response:
            assert response.status == 200, await response.text()
            listed: list[dict[str, Any]] = (await response.json())["recordings"]
        if listed and all(r["state"] == "ready" for r in listed):
            return listed
        assert asyncio.get_running_loop().time() < deadline, f"not finalised: {listed}"
        await asyncio.sleep(0.1)


async def test_recordings_download_through_the_router_after_the_session_ended(
    start_server: Any, start_router: StartRouter, fresh_redis_url: str, redis_client: Redis, tmp_path: Path
) -> None:
    def config(name: str) -> Any:
        return replica_config(streaming={"generation_segment_cap": 1, "recording_dir": str(tmp_path / name)})

    primary = await start_server(config("a"))
    secondary = await start_server(config("b"))
    router = await start_router([primary.url, secondary.url], redis_url=fresh_redis_url)
    async with WebSocketClient(router.url, session_init=INIT) as owner:
        await owner.connect()
        info = await owner.wait_for_event("session_info", timeout=20)
        await owner.wait_for_event("ltx2_stream_complete", timeout=30)
        assert await owner.wait_closed() == 1000
    sid, token = info["session_id"], info["resume_token"]
    await wait_until(lambda: primary.app[REGISTRY].get(sid) is None, 10, "the session lingers")
    (entry,) = await ready_recordings(primary.url, sid, token)
    # The session ended normally: its map entry is gone, the replicas are asked.
    assert await redis_client.get(map_key(sid)) is None
    (through,) = await ready_recordings(router.url, sid, token)
    assert through == entry
    auth = {"Authorization": f"Bearer {token}"}
    status, _, direct = await get(f"{primary.url}{entry['url']}", headers=auth)
    assert status == 200 and len(direct) == entry["bytes"]
    status, headers, data = await get(f"{router.url}{entry['url']}", headers=auth)
    assert status == 200 and data == direct
    assert headers["Content-Type"] == "video/mp4" and headers["Content-Length"] == str(len(direct))
    assert headers.get("Accept-Ranges") == "bytes"
    status, headers, part = await get(f"{router.url}{entry['url']}", headers={**auth, "Range": "bytes=100-199"})
    assert status == 206 and part == direct[100:200]
    assert headers["Content-Range"] == f"bytes 100-199/{len(direct)}" and headers["Content-Length"] == "100"
    async with aiohttp.ClientSession() as http, http.head(f"{router.url}{entry['url']}", headers=auth) as response:
        assert response.status == 200 and response.headers["Content-Length"] == str(len(direct))

    # A stale entry naming the other replica: its 404 sends the router on to the others.
    await redis_client.set(map_key(sid), secondary.url)
    status, _, data = await get(f"{router.url}{entry['url']}", params={"token": token})
    assert status == 200 and data == direct
    assert await redis_client.get(map_key(sid)) == secondary.url.encode()  # recordings never move an entry
    # Refusals come from the replica holding them, as it gave them.
    status, _, body = await get(f"{router.url}{entry['url']}", headers={"Authorization": "Bearer wrong"})
    assert status == 401 and b'"unauthorized"' in body
    status, _, body = await get(f"{router.url}/v1/sessions/{sid}/recording/{sid}-9.mp4", headers=auth)
    assert status == 404 and b'"invalid_message"' in body
