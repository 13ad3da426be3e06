"""WHEP viewers of a WebRTC session over loopback: real aiortc peers, plain WHEP requests, one encoding per tier."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import numpy as np
import pytest

from rtc_server.app import REGISTRY
from rtc_server.clients.webrtc_client import OfferRejected, ReceivedFrame, WebRTCClient
from rtc_server.clients.whep_client import WhepClient
from rtc_server.clients.ws_client import WebSocketClient
from rtc_server.media.shared_media import SharedMedia
from rtc_server.viewers.whep import WHEP
from tests.conftest import RunningServer, make_config
from tests.waiting import wait_until

INIT = {"curated_prompts": ["a red fox running through fresh snow"]}
FPS = 24


def config(**sections: Any) -> Any:
    streaming = sections.pop("streaming", {})
    return make_config(streaming=streaming, **sections)


@contextlib.asynccontextmanager
async def owner_session(server: RunningServer, **options: Any) -> AsyncIterator[tuple[WebRTCClient, dict[str, Any]]]:
    async with WebRTCClient(server.url, session_init=INIT, **options) as owner:
        await owner.connect()
        info = await owner.wait_for_event("session_info", timeout=20)
        await wait_until(lambda: owner.frame_count > 0, 20, "the owner got no frames")
        yield owner, info


@contextlib.asynccontextmanager
async def viewers(server: RunningServer, info: dict[str, Any], count: int, **options: Any) -> AsyncIterator[list[WhepClient]]:
    clients = [WhepClient(server.url, info["session_id"], info["watch_token"], **options) for _ in range(count)]
    try:
        await asyncio.gather(*(client.connect() for client in clients))
        yield clients
    finally:
        for client in clients:
            await client.close()


def media_of(server: RunningServer, session_id: str) -> SharedMedia:
    controller = server.app[REGISTRY].get(session_id)
    assert controller is not None and controller.viewers is not None
    media = controller.viewers.rtc_media
    assert media is not None
    return media


def by_marker(frames: list[ReceivedFrame]) -> dict[int, np.ndarray]:
    return {f.marker.frame_number: f.thumb for f in frames if f.marker is not None}


def fps_between(frames: list[ReceivedFrame], start: float, end: float) -> float:
    return sum(start <= f.received_at < end for f in frames) / (end - start)


async def test_eight_whep_viewers_and_the_owner_get_the_same_packets_from_one_encoder(start_server: Any) -> None:
    server = await start_server(config())
    async with owner_session(server) as (owner, info), viewers(server, info, 8) as clients:
        await wait_until(lambda: all(len(by_marker(c.frames)) >= 24 for c in clients), 30, "a viewer got no frames")
        media = media_of(server, info["session_id"])
        [tier] = media.tier_stats()
        assert tier.subscribers == 9
        released = media.source.stats.frames_released + media.source.stats.frames_held
        # One encoding for all nine senders (a frame or two may be in flight between the counters).
        assert abs(tier.frames - released) <= 2
        # The decoded pictures are bit-identical to the owner's: the same packets, decoded from a keyframe.
        owner_frames = by_marker(owner.frames)
        for client in clients:
            frames = by_marker(client.frames)
            common = sorted(set(frames) & set(owner_frames))
            assert len(common) >= 24
            for number in common:
                assert np.array_equal(frames[number], owner_frames[number]), f"frame {number} differs"
            numbers = sorted(frames)
            # Nine decoders share this process with the server: a loaded loop may lose a packet or two.
            assert len(numbers) >= 0.9 * (numbers[-1] - numbers[0] + 1), "a viewer missed many frames"


async def test_a_viewer_joining_mid_stream_gets_a_keyframe_within_a_second(start_server: Any) -> None:
    server = await start_server(config())
    async with owner_session(server) as (_, info):
        await asyncio.sleep(2.0)  # well past the owner's own first keyframe
        media = media_of(server, info["session_id"])
        keyframes_before = media.tier_stats()[0].keyframes
        async with viewers(server, info, 1) as [client]:
            await asyncio.wait_for(client.connected.wait(), 10)
            connected_at = time.monotonic()
            await wait_until(lambda: client.first_frame_at is not None, 5, "no frame for the new viewer")
            assert client.first_frame_at is not None
            assert client.first_frame_at - connected_at < 1.0
            assert media.tier_stats()[0].keyframes > keyframes_before


async def test_a_viewer_whose_sending_blocks_is_dropped_and_the_others_keep_their_fps(start_server: Any) -> None:
    server = await start_server(config())
    async with owner_session(server) as (owner, info), viewers(server, info, 3) as clients:
        await wait_until(lambda: all(c.frame_count > 24 for c in clients), 20, "viewers got no frames")
        media = media_of(server, info["session_id"])
        [tier] = media.tier_stats()
        stuck = next(t for t in media._video[tier.mime].tracks if t is not media._video[tier.mime].tracks[0])
        # That viewer's packets stop leaving the server (a send that never completes): its queue fills.
        sender = next(
            s for v in server.app[WHEP].viewers_of(info["session_id"]) for s in v.pc.getSenders() if s.track is stuck
        )
        blocked = asyncio.Event()

        async def never(data: bytes) -> None:
            await blocked.wait()

        sender.transport._send_rtp = never
        before = time.monotonic()
        await wait_until(lambda: tier.dropped == 1, 10, "the stuck viewer was not dropped")
        await wait_until(lambda: len(server.app[WHEP].viewers_of(info["session_id"])) == 2, 10, "still 3 viewers")
        await asyncio.sleep(2.0)
        after = time.monotonic()
        healthy = [c for c in clients if c.frames and c.frames[-1].received_at > after - 0.5]
        assert len(healthy) == 2
        for client in [owner, *healthy]:
            assert fps_between(client.frames, before, after) > 0.85 * FPS
        blocked.set()


async def test_a_stopped_viewer_process_does_not_lower_the_others_fps_and_is_dropped(start_server: Any) -> None:
    # Receivers report every 0.5-1.5 s: 3 s of silence is a stopped viewer, not a loaded machine (it
    # applies to the owner too).
    server = await start_server(config(webrtc={"peer_timeout_seconds": 3.0}))
    async with owner_session(server) as (owner, info), viewers(server, info, 2) as clients:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "rtc_server.clients.whep_client", server.url, info["session_id"], info["watch_token"],
            stdout=asyncio.subprocess.PIPE,
        )
        try:
            assert process.stdout is not None
            while True:
                line = json.loads(await asyncio.wait_for(process.stdout.readline(), 20))
                if line["event"] == "progress" and line["frames"] > 0:
                    break
            whep = server.app[WHEP]
            assert len(whep.viewers_of(info["session_id"])) == 3
            steady = time.monotonic()
            await asyncio.sleep(2.0)
            process.send_signal(signal.SIGSTOP)  # reads nothing, answers nothing, sends no RTCP
            stopped = time.monotonic()
            await wait_until(lambda: len(whep.viewers_of(info["session_id"])) == 2, 10, "the stopped viewer stayed")
            await asyncio.sleep(1.0)
            end = time.monotonic()
            for client in [owner, *clients]:
                assert fps_between(client.frames, stopped, end) > 0.85 * fps_between(client.frames, steady, stopped)
        finally:
            process.kill()
            await process.wait()


async def test_an_h264_viewer_gets_its_own_tier_beside_the_owners_vp8(start_server: Any) -> None:
    server = await start_server(config())
    async with owner_session(server) as (_, info), viewers(server, info, 2, video_codec="video/H264") as clients:
        await wait_until(lambda: all(c.frame_count > 24 for c in clients), 20, "H.264 viewers got no frames")
        tiers = {t.mime: t for t in media_of(server, info["session_id"]).tier_stats()}
        assert set(tiers) == {"video/VP8", "video/H264"}
        assert tiers["video/H264"].subscribers == 2
        a, b = (by_marker(c.frames) for c in clients)
        common = sorted(set(a) & set(b))
        assert common and all(np.array_equal(a[n], b[n]) for n in common)
    # The last H.264 viewer gone, its tier (and its encoder) goes too.
    await wait_until(lambda: {t.mime for t in media_of(server, info["session_id"]).tier_stats()} == {"video/VP8"}, 5, "tier kept")


async def test_viewers_get_the_sound_where_the_session_has_it(start_server: Any) -> None:
    server = await start_server(config())
    async with owner_session(server, receive_audio=True) as (owner, info), viewers(server, info, 2, receive_audio=True) as clients:
        await wait_until(lambda: all(c.audio_frame_count > 50 for c in clients), 20, "viewers got no sound")
        assert owner.audio_frame_count > 50


async def test_viewers_get_the_sound_even_when_the_owner_takes_none(start_server: Any) -> None:
    server = await start_server(config())
    async with owner_session(server) as (owner, info), viewers(server, info, 1, receive_audio=True) as [client]:
        await wait_until(lambda: client.audio_frame_count > 50, 20, "the viewer got no sound")
        assert not owner.audio_track_received


async def test_a_session_without_sound_answers_the_viewers_audio_inactive(start_server: Any) -> None:
    server = await start_server(config(generator={"backend": "synthetic", "options": {"audio": False}}))
    async with owner_session(server) as (_, info), viewers(server, info, 1, receive_audio=True) as [client]:
        await wait_until(lambda: client.frame_count > 24, 20, "the viewer got no frames")
        assert not client.audio_track_received or client.audio_frame_count == 0
        assert "a=inactive" in client.pc.remoteDescription.sdp


async def test_viewers_end_when_the_session_ends(start_server: Any) -> None:
    server = await start_server(config(streaming={"generation_segment_cap": 3}))
    async with owner_session(server) as (owner, info), viewers(server, info, 3) as clients:
        await owner.wait_for_event("ltx2_stream_complete", timeout=30)
        await wait_until(lambda: all(c.pc.connectionState == "closed" or c.pc.connectionState == "failed" for c in clients), 15, "viewers still connected")
        await wait_until(lambda: len(server.app[WHEP]) == 0, 10, "the server kept viewers")


async def post_offer(server: RunningServer, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, Any, Any]:
    async with aiohttp.ClientSession() as http, http.post(f"{server.url}{path}", data=body, headers=headers) as response:
        text = await response.text()
        with contextlib.suppress(ValueError):
            return response.status, json.loads(text), response.headers
        return response.status, text, response.headers


async def test_tokens_sessions_room_and_offers_are_checked(start_server: Any) -> None:
    server = await start_server(config(streaming={"viewers": {"max_per_session": 2}}))
    async with owner_session(server) as (_, info):
        sid, token = info["session_id"], info["watch_token"]
        for bad in (None, "wrong", info["resume_token"]):
            with pytest.raises(OfferRejected) as refused:
                async with WhepClient(server.url, sid, bad) as client:
                    await client.connect()
            assert refused.value.status == 401
            assert refused.value.body["error"]["code"] == "unauthorized"
        with pytest.raises(OfferRejected) as refused:
            async with WhepClient(server.url, "no-such-session", token) as client:
                await client.connect()
        assert refused.value.status == 404
        auth = {"Authorization": f"Bearer {token}"}
        status, body, _ = await post_offer(server, f"/v1/sessions/{sid}/whep", b"v=0", {**auth, "Content-Type": "application/json"})
        assert status == 415 and body["error"]["code"] == "invalid_message"
        status, body, _ = await post_offer(server, f"/v1/sessions/{sid}/whep", b"not sdp", {**auth, "Content-Type": "application/sdp"})
        assert status == 400 and "offer" in body["error"]["message"]
        async with viewers(server, info, 2) as clients:
            with pytest.raises(OfferRejected) as refused:
                async with WhepClient(server.url, sid, token) as client:
                    await client.connect()
            assert refused.value.status == 503 and refused.value.headers["Retry-After"]
            async with aiohttp.ClientSession() as http:
                assert clients[0].location is not None
                async with http.patch(clients[0].location, data=b"a=candidate", headers=auth) as response:
                    assert response.status == 405
            assert await clients[0].leave() == 200
            assert await clients[0].leave() == 404
            # Its place is free again.
            async with WhepClient(server.url, sid, token) as again:
                await again.connect()
        # The answer carried the resource and every candidate: no trickle.
        assert clients[1].location is not None and "/whep/" in clients[1].location


async def test_viewers_of_a_websocket_owner_get_a_paced_feed_of_its_frames_with_sound(start_server: Any) -> None:
    server = await start_server(config())
    async with WebSocketClient(server.url, session_init=INIT) as owner:
        await owner.connect()
        info = await owner.wait_for_event("session_info", timeout=20)
        async with viewers(server, info, 2, receive_audio=True) as clients:
            await wait_until(lambda: all(len(by_marker(c.frames)) >= 48 for c in clients), 30, "viewers got no frames")
            await wait_until(lambda: all(c.audio_frame_count > 50 for c in clients), 10, "viewers got no sound")
            hub = server.app[REGISTRY].get(info["session_id"]).viewers
            assert hub.rtc_media is None and hub.paced_feed is not None
            [tier] = hub.paced_feed.media.tier_stats()
            assert tier.subscribers == 2
            a, b = (by_marker(c.frames) for c in clients)
            common = sorted(set(a) & set(b))
            assert len(common) >= 24 and all(np.array_equal(a[n], b[n]) for n in common)
            # Paced at the stream's fps, as the owner's own clock would play them.
            start = clients[0].frames[-1].received_at - 1.5
            assert fps_between(clients[0].frames, start, start + 1.5) > 0.85 * FPS
        # The last viewer gone, the feed stops.
        await wait_until(lambda: hub.paced_feed is None, 5, "the feed outlived its viewers")


async def test_hostile_offers_get_clear_errors_and_leave_no_trace(start_server: Any) -> None:
    server = await start_server(config(streaming={"viewers": {"max_per_session": 3}}, server={"max_body_bytes": 64 * 1024}))
    async with owner_session(server) as (owner, info):
        sid, token = info["session_id"], info["watch_token"]
        path = f"/v1/sessions/{sid}/whep"
        sdp_headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/sdp"}
        async with WhepClient(server.url, sid, token) as probe:
            real_offer = await probe.local_offer()
        sendonly = real_offer.replace("a=recvonly", "a=sendonly")
        no_video = "\r\n".join(line for line in real_offer.split("\r\n") if not line.startswith("m=video"))
        hostile: list[tuple[bytes, int]] = [
            (b"", 400),
            (b"\xff\xfe\x00garbage", 400),
            (b"v=0\r\n", 400),
            (real_offer[: len(real_offer) // 2].encode(), 400),
            (sendonly.encode(), 400),
            (no_video.encode(), 400),
            (b"v=0\r\n" + b"a=x\r\n" * 20_000, 413),
        ]
        for body, status in hostile:
            got, answer, _ = await post_offer(server, path, body, sdp_headers)
            assert got == status, (body[:40], got, answer)
            assert isinstance(answer, dict) and answer["error"]["code"] == "invalid_message", answer
        whep = server.app[WHEP]
        hub = server.app[REGISTRY].get(sid).viewers
        assert len(whep) == 0 and hub.reserved == 0  # every refused offer gave its place back
        # All three places are free, and the owner never noticed.
        async with viewers(server, info, 3) as clients:
            await wait_until(lambda: all(c.frame_count > 10 for c in clients), 20, "viewers got no frames")
            # Measured over a steady window, not the session's first second (its first segment may stall).
            start = time.monotonic()
            await asyncio.sleep(2.0)
            assert fps_between(owner.frames, start, time.monotonic()) > 0.85 * FPS


async def test_viewers_that_come_and_go_abruptly_leave_no_trace(start_server: Any) -> None:
    server = await start_server(config(webrtc={"peer_timeout_seconds": 3.0}))  # owner included: see above
    async with owner_session(server) as (_, info):
        whep = server.app[WHEP]
        media = media_of(server, info["session_id"])
        for round_ in range(5):
            async with viewers(server, info, 4) as clients:
                await wait_until(lambda: all(c.frame_count > 0 for c in clients), 20, "viewers got no frames")
                # Half leave politely (DELETE), half just vanish (the peer connection closes).
                for client in clients[: 2 + round_ % 2]:
                    assert await client.leave() == 200
        await wait_until(lambda: len(whep) == 0, 15, f"{len(whep)} viewers left behind")
        [tier] = media.tier_stats()
        assert tier.subscribers == 1  # the owner's track only
        hub = server.app[REGISTRY].get(info["session_id"]).viewers
        assert hub.reserved == 0


async def test_a_viewer_gets_the_ice_servers_with_its_watch_token_where_the_owners_list_needs_auth(
    start_server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RTCVS_TEST_TOKEN", "owner-access")
    monkeypatch.setenv("RTCVS_TEST_TURN_SECRET", "turn-secret")
    server = await start_server(
        config(
            auth={"mode": "token", "token_envs": ["RTCVS_TEST_TOKEN"]},
            webrtc={"turn": {"urls": ["turn:127.0.0.1:3478"], "secret_env": "RTCVS_TEST_TURN_SECRET", "ttl_seconds": 600}},
        )
    )
    async with owner_session(server, auth_token="owner-access") as (_, info):
        sid, watch = info["session_id"], info["watch_token"]
        async with aiohttp.ClientSession() as http:
            viewer = {"Authorization": f"Bearer {watch}"}
            async with http.get(f"{server.url}/v1/webrtc/ice-servers", headers=viewer) as response:
                assert response.status == 401  # the owners' list needs the server's access token
            async with http.get(f"{server.url}/v1/sessions/{sid}/ice-servers", headers=viewer) as response:
                assert response.status == 200 and response.headers["Cache-Control"] == "no-store"
                body = await response.json()
            [turn] = body["ice_servers"]
            assert turn["urls"] == ["turn:127.0.0.1:3478"] and turn["username"] and turn["credential"] != "turn-secret"
            assert body["ttl_seconds"] == 600
            for headers, path, status in (
                ({"Authorization": "Bearer wrong"}, f"/v1/sessions/{sid}/ice-servers", 401),
                ({}, f"/v1/sessions/{sid}/ice-servers", 401),
                (viewer, "/v1/sessions/no-such-session/ice-servers", 404),
            ):
                async with http.get(f"{server.url}{path}", headers=headers) as response:
                    assert response.status == status
                    assert (await response.json())["error"]["code"] in ("unauthorized", "invalid_message")
        # The WHEP answer names the same servers (Link rel="ice-server"), credentials fresh.
        async with WhepClient(server.url, sid, watch) as client:
            await client.connect()
            assert client.link_header is not None and 'rel="ice-server"' in client.link_header
            assert "turn:127.0.0.1:3478" in client.link_header
