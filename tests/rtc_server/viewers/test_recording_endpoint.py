"""``GET /v1/sessions/{id}/recording[/{name}]`` over loopback: the owner's token, after the session too."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
from yarl import URL

from rtc_server.clients.ws_client import WebSocketClient
from tests.conftest import RunningServer, make_config
from tests.rtc_server.viewers.test_recording import INIT, wait_ready


def config(tmp_path: Path | None, cap: int) -> Any:
    recording = {"recording_dir": str(tmp_path / "rec")} if tmp_path is not None else {}
    return make_config(streaming={"generation_segment_cap": cap, **recording})


async def get(url: str | URL, **kwargs: Any) -> tuple[int, dict[str, str], bytes]:
    async with aiohttp.ClientSession() as http, http.get(url, **kwargs) as response:
        return response.status, dict(response.headers), await response.read()


def bearer(token: str) -> dict[str, dict[str, str]]:
    return {"headers": {"Authorization": f"Bearer {token}"}}


async def recorded_session(server: RunningServer, cap: int) -> dict[str, Any]:
    """Run a session of ``cap`` segments to its end; its ``session_info``."""
    async with WebSocketClient(server.url, session_init=INIT) as owner:
        await owner.connect()
        info = await owner.wait_for_event("session_info", timeout=20)
        await owner.wait_for_event("ltx2_stream_complete", timeout=30)
        assert await owner.wait_closed() == 1000
    return info


async def test_the_owner_lists_and_downloads_its_recording_after_the_session_ended(
    start_server: Any, tmp_path: Path
) -> None:
    server = await start_server(config(tmp_path, 2))
    info = await recorded_session(server, 2)
    sid, token = info["session_id"], info["resume_token"]
    (entry,) = await wait_ready(server, sid, token)
    assert entry["state"] == "ready" and entry["url"] == f"/v1/sessions/{sid}/recording/{sid}-1.mp4"
    assert entry["ended_at"] >= entry["started_at"]
    listing = f"{server.url}/v1/sessions/{sid}/recording"
    download = f"{server.url}{entry['url']}"
    # The session is over: its controller is gone, the sidecar's token hash decides.
    status, _, body = await get(listing, params={"token": token})
    assert status == 200 and b'"ready"' in body
    status, headers, data = await get(download, **bearer(token))
    assert status == 200 and headers["Content-Type"] == "video/mp4"
    assert data == (tmp_path / "rec" / entry["name"]).read_bytes() and len(data) == entry["bytes"]
    status, _, data = await get(download, params={"token": token})
    assert status == 200 and len(data) == entry["bytes"]
    status, headers, part = await get(download, headers={"Authorization": f"Bearer {token}", "Range": "bytes=0-99"})
    assert status == 206 and part == data[:100] and headers["Content-Range"].startswith("bytes 0-99/")


async def test_missing_wrong_and_watch_tokens_are_refused(start_server: Any, tmp_path: Path) -> None:
    server = await start_server(config(tmp_path, 1))
    info = await recorded_session(server, 1)
    sid = info["session_id"]
    (entry,) = await wait_ready(server, sid, info["resume_token"])
    for url in (f"{server.url}/v1/sessions/{sid}/recording", f"{server.url}{entry['url']}"):
        status, headers, body = await get(url)
        assert status == 401 and b'"unauthorized"' in body and headers["WWW-Authenticate"].startswith("Bearer")
        assert (await get(url, **bearer("not-the-token")))[0] == 401
        assert (await get(url, params={"token": info["watch_token"]}))[0] == 401, "a viewer cannot download"
        assert (await get(url, **bearer(info["watch_token"])))[0] == 401


async def test_other_sessions_and_names_that_are_not_its_recordings_are_not_found(start_server: Any, tmp_path: Path) -> None:
    server = await start_server(config(tmp_path, 1))
    first = await recorded_session(server, 1)
    second = await recorded_session(server, 1)
    sid, token = first["session_id"], first["resume_token"]
    await wait_ready(server, sid, token)
    await wait_ready(server, second["session_id"], second["resume_token"])
    base = f"{server.url}/v1/sessions"
    (tmp_path / "secret.mp4").write_bytes(b"outside the recordings directory")
    for name in (
        f"{second['session_id']}-1.mp4",  # another session's recording
        f"{sid}-2.mp4",
        f"{sid}-1.json",
        "..%2Fsecret.mp4",
        "%2E%2E%2Fsecret.mp4",
        f"{sid}-1.mp4%00",
    ):
        status, _, body = await get(f"{base}/{sid}/recording/{name}", **bearer(token))
        assert status == 404, (name, status, body)
    for raw in ("../../secret.mp4", "..", "./../secret.mp4"):  # sent as they are, not normalised by the client
        status, _, _ = await get(URL(f"{base}/{sid}/recording/{raw}", encoded=True), **bearer(token))
        assert status == 404, raw
    for session in ("no-such-session", "..", "a.b", "x" * 65):
        assert (await get(f"{base}/{session}/recording", **bearer(token)))[0] == 404, session
    # The other session's token does not open this one's recordings.
    assert (await get(f"{base}/{sid}/recording", **bearer(second["resume_token"])))[0] == 401


async def test_a_recording_in_progress_is_listed_and_downloads_once_finalised(start_server: Any, tmp_path: Path) -> None:
    server = await start_server(config(tmp_path, 0))
    async with WebSocketClient(server.url, session_init=INIT) as owner:
        await owner.connect()
        info = await owner.wait_for_event("session_info", timeout=20)
        sid, token = info["session_id"], info["resume_token"]
        await owner.wait_for_event("media_segment_complete", lambda e: e["segment_idx"] >= 1, timeout=20)
        for _ in range(100):
            status, _, body = await get(f"{server.url}/v1/sessions/{sid}/recording", **bearer(token))
            if status == 200:
                break
            await asyncio.sleep(0.05)  # its sidecar is written with the first media, in a thread
        assert status == 200, body
        listed = (await _json(server, sid, token))["recordings"]
        (entry,) = listed
        assert entry["state"] == "recording" and "url" not in entry and entry["bytes"] > 0
        status, _, body = await get(f"{server.url}/v1/sessions/{sid}/recording/{entry['name']}", **bearer(token))
        assert status == 409 and b'"retryable":true' in body.replace(b" ", b"")
    (done,) = await wait_ready(server, sid, token)  # the owner left: the recording is finalised
    assert done["frames"] >= 2 * 24
    assert (await get(f"{server.url}{done['url']}", **bearer(token)))[0] == 200


async def test_recording_endpoints_are_not_found_on_a_server_that_does_not_record(start_server: Any) -> None:
    server = await start_server(config(None, 1))
    info = await recorded_session(server, 1)
    base = f"{server.url}/v1/sessions/{info['session_id']}/recording"
    assert (await get(base, **bearer(info["resume_token"])))[0] == 404
    assert (await get(f"{base}/{info['session_id']}-1.mp4", **bearer(info["resume_token"])))[0] == 404


async def _json(server: RunningServer, sid: str, token: str) -> dict[str, Any]:
    async with aiohttp.ClientSession() as http, http.get(
        f"{server.url}/v1/sessions/{sid}/recording", **bearer(token)
    ) as response:
        assert response.status == 200
        body: dict[str, Any] = await response.json()
        return body
