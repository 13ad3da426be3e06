"""Debian's nginx with the shipped ``deploy/nginx/rtc-server.conf`` in front of a real server, over TLS.

The page, the offer (then video over UDP, straight to the server), ICE servers, the WebSocket
fallback, the redirect to HTTPS, the server's origin and token checks, body limits and the
WebSocket heartbeat, all through the snippet as shipped (placeholders filled in by
``tests/deploy/nginx_fixture.py``). Clients verify the certificate against the test's CA.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import os
import re
import ssl
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from rtc_server.app import REGISTRY
from rtc_server.clients.webrtc_client import OfferRejected, WebRTCClient, fetch_ice_servers
from rtc_server.config import ServerConfig, ServiceConfig, WebRTCConfig, WebSocketConfig
from tests.conftest import RunningServer, make_config
from tests.deploy.nginx_fixture import SNIPPET, Nginx, NginxFactory, snippet_directives
from tests.deploy.tls import Certificates

TOKEN_ENV = "RTCVS_TEST_DEPLOY_TOKEN"
TOKEN = "deploy-test-token-0123456789"
INIT = {"curated_prompts": ["a red fox running through fresh snow"]}
FRAMES_PER_SEGMENT = 24  # make_config: 24 frames of 256x256 at 24 fps
SHORT_READ_TIMEOUT_S = 2  # the heartbeat tests' proxy_read_timeout, substituted for the shipped 60 s
STREAM_TIMEOUTS = "proxy_read_timeout 60s;\n        proxy_send_timeout 60s;"
GONE = (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR)


def server_config(**sections: dict[str, Any]) -> ServiceConfig:
    return make_config(auth={"mode": "token", "token_envs": [TOKEN_ENV]}, **sections)


def upstream_port(server: RunningServer) -> int:
    return int(server.url.rsplit(":", 1)[1])


@pytest.fixture(autouse=True)
def token(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    return TOKEN


@pytest.fixture
async def https(certificates: Certificates) -> AsyncIterator[aiohttp.ClientSession]:
    """An HTTP client that trusts the test CA only (hostname checked), like a browser trusts a real CA."""
    connector = aiohttp.TCPConnector(ssl=certificates.client_context())
    async with aiohttp.ClientSession(connector=connector) as session:
        yield session


@pytest.fixture
async def proxied(start_server: Any, nginx: NginxFactory) -> tuple[RunningServer, Nginx]:
    """A server with token auth, and nginx with the shipped snippet in front of it."""
    server = await start_server(server_config())
    return server, nginx.start(upstream_port(server))


def location_block(text: str, location: str) -> list[str]:
    """The directives of one ``location`` block of the snippet (blocks there do not nest)."""
    directives = snippet_directives(text)
    start = directives.index(f"location {location} {{")
    end = directives.index("}", start)
    return directives[start + 1 : end]


def seconds(directives: list[str], name: str) -> float:
    (value,) = [d.split()[1].rstrip(";") for d in directives if d.split()[0] == name]
    match = re.fullmatch(r"(\d+)(s|m)?", value)
    assert match, value
    return int(match[1]) * (60 if match[2] == "m" else 1)


def ffprobe_frames(path: Path) -> list[dict[str, Any]]:
    result = subprocess.run(
        ["ffprobe", "-v", "error", "-select_streams", "v:0", "-show_frames", "-show_entries",
         "frame=width,height", "-of", "json", str(path)],
        capture_output=True, text=True, check=True, timeout=60,
    )  # fmt: skip
    return list(json.loads(result.stdout)["frames"])


def test_the_snippets_limits_match_the_servers_defaults() -> None:
    """Checked from the file itself: what the fast tests below cannot wait out (60 s) or send (64 MiB)."""
    text = SNIPPET.read_text()
    stream = location_block(text, "= /v1/stream")
    heartbeat = WebSocketConfig().heartbeat_seconds
    assert heartbeat is not None
    for name in ("proxy_read_timeout", "proxy_send_timeout"):
        assert seconds(stream, name) >= 2 * heartbeat, f"{name} must be at least twice the heartbeat"
    assert "proxy_buffering off;" in stream
    offer = location_block(text, "= /v1/webrtc/offer")
    (limit,) = [d for d in offer if d.startswith("client_max_body_size ")]
    assert limit == f"client_max_body_size {ServerConfig().max_body_bytes // (1024 * 1024)}m;"
    longest_gathering = max(
        m.le for m in WebRTCConfig.model_fields["gather_timeout_seconds"].metadata if hasattr(m, "le")
    )
    assert seconds(offer, "proxy_read_timeout") > longest_gathering, "the answer waits for gathering"
    assert "proxy_cache off;" in location_block(text, "= /v1/webrtc/ice-servers")
    assert STREAM_TIMEOUTS in text, "the heartbeat tests substitute these two lines"


async def test_the_page_and_health_come_through_tls(
    proxied: tuple[RunningServer, Nginx], https: aiohttp.ClientSession
) -> None:
    _, proxy = proxied
    async with https.get(f"{proxy.https_url}/") as response:
        assert response.status == 200
        assert response.content_type == "text/html"
        assert "<title>Live video</title>" in await response.text()
        assert response.headers["Strict-Transport-Security"].startswith("max-age=")
    async with https.get(f"{proxy.https_url}/client/app.js") as response:
        assert response.status == 200 and "javascript" in response.content_type
    for path in ("/healthz", "/readyz"):
        async with https.get(f"{proxy.https_url}{path}") as response:
            assert response.status == 200, path
    # TLS is really checked: a client that trusts nothing but the system's CAs is refused.
    async with aiohttp.ClientSession() as untrusting:
        with pytest.raises(aiohttp.ClientConnectorCertificateError):
            await untrusting.get(f"{proxy.https_url}/healthz")


async def test_plain_http_redirects_to_https_except_certificate_renewals(proxied: tuple[RunningServer, Nginx]) -> None:
    _, proxy = proxied
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{proxy.http_url}/v1/stream?x=1", allow_redirects=False) as response:
            assert response.status == 301
            # Production listens on 443, so the redirect names no port.
            assert response.headers["Location"] == "https://127.0.0.1/v1/stream?x=1"
        async with http.get(f"{proxy.http_url}/.well-known/acme-challenge/probe", allow_redirects=False) as response:
            assert response.status == 404, "ACME http-01 challenges are answered on port 80, not redirected"


async def test_an_offer_through_nginx_then_video_straight_over_udp(
    proxied: tuple[RunningServer, Nginx], https: aiohttp.ClientSession
) -> None:
    server, proxy = proxied
    async with https.get(f"{proxy.https_url}/v1/webrtc/ice-servers", headers=bearer()) as response:
        assert response.status == 200
        assert response.headers["Cache-Control"] == "no-store"
    servers, _ = await fetch_ice_servers(proxy.https_url, auth_token=TOKEN, http=https)
    async with WebRTCClient(proxy.https_url, session_init=INIT, auth_token=TOKEN, ice_servers=servers) as client:
        session_id = await client.connect(http=https)
        assert server.app[REGISTRY].get(session_id) is not None
        await client.wait_for_event("ltx2_segment_complete", lambda e: e["segment_idx"] == 0, timeout=30)
        await wait_until(lambda: segment_frames(client, 0) == FRAMES_PER_SEGMENT, 15, "a whole segment of frames")
    access = (proxy.directory / "access.log").read_text()
    assert re.search(r'"POST /v1/webrtc/offer HTTP/1\.1" 200 ', access), access


async def test_the_websocket_through_nginx_delivers_a_whole_fmp4_segment(
    proxied: tuple[RunningServer, Nginx], https: aiohttp.ClientSession, tmp_path: Path
) -> None:
    _, proxy = proxied
    # The page's way: the token as a subprotocol next to rtcvs (a browser cannot set headers).
    async with https.ws_connect(wss(proxy, "/v1/stream"), protocols=("rtcvs", f"bearer.{TOKEN}"), max_msg_size=0) as ws:
        assert ws.protocol == "rtcvs"
        await ws.send_json({"type": "session_init_v2", **INIT})
        media = await one_segment(ws)
    path = tmp_path / "segment0.mp4"
    path.write_bytes(media)
    frames = ffprobe_frames(path)
    assert len(frames) == FRAMES_PER_SEGMENT
    assert {(f["width"], f["height"]) for f in frames} == {(256, 256)}


async def test_the_servers_origin_and_token_checks_work_through_nginx(
    proxied: tuple[RunningServer, Nginx], certificates: Certificates
) -> None:
    server, proxy = proxied
    own_page = {"Origin": proxy.origin}  # https://127.0.0.1:<port>: the Host must keep its port
    foreign = {"Origin": "https://evil.example"}
    async with session_with(certificates, own_page) as http:
        async with WebRTCClient(proxy.https_url, session_init=INIT, auth_token=TOKEN) as client:
            await client.connect(http=http)
            await client.wait_channel_open()
        async with http.ws_connect(wss(proxy, "/v1/stream"), protocols=("rtcvs", f"bearer.{TOKEN}")) as ws:
            await ws.send_json({"type": "session_init_v2", **INIT})
            assert (await ws.receive_json(timeout=10))["type"]  # the session started: events flow
        async with WebRTCClient(proxy.https_url, session_init=INIT) as client:
            with pytest.raises(OfferRejected) as refused:
                await client.connect(http=http)
            assert refused.value.status == 401
    async with session_with(certificates, foreign) as http:
        async with WebRTCClient(proxy.https_url, session_init=INIT, auth_token=TOKEN) as client:
            with pytest.raises(OfferRejected) as refused:
                await client.connect(http=http)
            assert refused.value.status == 403
        with pytest.raises(aiohttp.WSServerHandshakeError) as handshake:
            await http.ws_connect(wss(proxy, "/v1/stream"), protocols=("rtcvs", f"bearer.{TOKEN}"))
        assert handshake.value.status == 403
    await wait_until(lambda: len(server.app[REGISTRY]) == 0, 15, "sessions left over")


async def test_offer_bodies_up_to_the_servers_limit_pass_and_others_stay_small(
    proxied: tuple[RunningServer, Nginx], https: aiohttp.ClientSession, certificates: Certificates
) -> None:
    _, proxy = proxied
    big = b"x" * (2 * 1024 * 1024)  # over nginx's 1 MiB default, far under the offer's 64 MiB
    headers = {**bearer(), "Content-Type": "application/json"}
    async with https.post(f"{proxy.https_url}/v1/webrtc/offer", data=io.BytesIO(big), headers=headers) as response:
        assert response.status == 400, "the server, not nginx, judges a large offer"
        assert (await response.json())["error"]["code"]
    async with https.post(
        f"{proxy.https_url}/v1/admin/prompts/reload", data=io.BytesIO(big), headers=headers
    ) as response:
        assert response.status == 413
    # Above 64 MiB nginx answers from the Content-Length alone, before reading the body.
    status = await status_of_announced_body(proxy, certificates, 64 * 1024 * 1024 + 1)
    assert status == 413


@pytest.mark.slow  # 14 s of waiting out timeouts
@pytest.mark.parametrize(
    ("heartbeat_s", "client_pongs"),
    [(0.5, False), (None, False), (None, True)],
    ids=["heartbeat", "no-heartbeat", "client-traffic-only"],
)
async def test_a_paused_websocket_session_outlives_the_proxy_timeout_only_with_traffic(
    heartbeat_s: float | None,
    client_pongs: bool,
    start_server: Any,
    nginx: NginxFactory,
    https: aiohttp.ClientSession,
) -> None:
    """With the server's heartbeat a paused session stays; without, nginx cuts it at its read timeout.

    The third case shows what "idle" means to nginx: traffic from the client alone (unsolicited
    pongs, which the server ignores) also keeps the upgraded connection open.
    """
    # The shipped 60 s cannot be waited out here: the same lines, at 2 s, are what this test runs.
    short = STREAM_TIMEOUTS.replace("60s", f"{SHORT_READ_TIMEOUT_S}s")
    server = await start_server(server_config(websocket={"heartbeat_seconds": heartbeat_s}))
    proxy = nginx.start(upstream_port(server), overrides={STREAM_TIMEOUTS: short})
    async with https.ws_connect(wss(proxy, "/v1/stream"), protocols=("rtcvs", f"bearer.{TOKEN}"), autoping=False) as ws:
        await ws.send_json({"type": "session_init_v2", **INIT})
        await ws.send_json({"type": "generation_paused_updated", "paused": True})
        silent_for, pings = await watch_silence(
            ws, 3 * SHORT_READ_TIMEOUT_S, pong_every_s=0.5 if client_pongs else None
        )
    if heartbeat_s is not None or client_pongs:
        assert silent_for is None, f"nginx cut a session with traffic after {silent_for:.1f} s without media"
        if heartbeat_s is not None:
            assert pings >= 2 * SHORT_READ_TIMEOUT_S, "the server's pings must pass through nginx"
    else:
        assert silent_for is not None, "without pings nginx must cut a silent session at its read timeout"
        assert SHORT_READ_TIMEOUT_S - 0.5 <= silent_for <= SHORT_READ_TIMEOUT_S + 3
        assert pings == 0
        assert "upstream timed out" in proxy.error_log()
        await wait_until(lambda: len(server.app[REGISTRY]) == 0, 10, "the cut session was kept")


async def test_the_guides_curl_checks_answer_as_it_says(
    proxied: tuple[RunningServer, Nginx], certificates: Certificates
) -> None:
    """The checklist of docs/deploying.md, its curl lines as written there, on this nginx."""
    _, proxy = proxied
    curl = ["curl", "--cacert", str(certificates.ca)]
    _, body = await run(*curl, "-fsS", f"{proxy.https_url}/healthz")
    assert json.loads(body)["status"] == "ok"
    _, head = await run(*curl, "-sI", f"{proxy.http_url}/")
    assert head.splitlines()[0].split()[1] == "301" and "Location: https://127.0.0.1/\r\n" in head
    _, status = await run(
        *curl, "-s", "-o", "/dev/null", "-w", "%{http_code}\n", f"{proxy.https_url}/v1/webrtc/ice-servers"
    )
    assert status.strip() == "401"
    _, answer = await run(
        *curl, "-fsS", "-D", "-", "-H", f"Authorization: Bearer {TOKEN}", f"{proxy.https_url}/v1/webrtc/ice-servers"
    )
    headers, _, payload = answer.partition("\r\n\r\n")
    assert "cache-control: no-store" in headers.lower()
    assert set(json.loads(payload)) == {"ice_servers", "ttl_seconds"}
    key = base64.b64encode(os.urandom(16)).decode()
    code, upgrade = await run(
        *curl, "-si", "--http1.1", "--max-time", "3", "-H", "Connection: Upgrade", "-H", "Upgrade: websocket",
        "-H", "Sec-WebSocket-Version: 13", "-H", f"Sec-WebSocket-Key: {key}",
        "-H", f"Sec-WebSocket-Protocol: rtcvs, bearer.{TOKEN}", f"{proxy.https_url}/v1/stream",
    )  # fmt: skip
    assert code == 28, "curl holds the upgraded connection until --max-time"
    assert upgrade.startswith("HTTP/1.1 101 Switching Protocols"), upgrade
    assert "Sec-WebSocket-Protocol: rtcvs\r\n" in upgrade


# --- helpers ---------------------------------------------------------------------------------------


def bearer() -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKEN}"}


def wss(proxy: Nginx, path: str) -> str:
    return f"wss://127.0.0.1:{proxy.https_port}{path}"


def session_with(certificates: Certificates, headers: dict[str, str]) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=certificates.client_context()), headers=headers)


def segment_frames(client: WebRTCClient, segment_idx: int) -> int:
    return sum(1 for f in client.frames if f.marker and f.marker.segment_idx == segment_idx)


async def wait_until(predicate: Any, timeout: float, message: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, message
        await asyncio.sleep(0.05)


async def one_segment(ws: aiohttp.ClientWebSocketResponse, timeout: float = 30) -> bytes:
    """The first segment's fMP4 (init + fragments), read until its media_segment_complete."""
    parts: list[bytes] = []
    started = False
    async with asyncio.timeout(timeout):
        while True:
            message = await ws.receive()
            assert message.type not in GONE, message
            if message.type == aiohttp.WSMsgType.BINARY and started:
                parts.append(message.data)
            elif message.type == aiohttp.WSMsgType.TEXT:
                event = json.loads(message.data)
                if event["type"] == "media_init":
                    started = True
                elif event["type"] == "media_segment_complete" and started:
                    assert event["chunks"] == len(parts) - 1, "one init segment, then the chunks"
                    return b"".join(parts)


async def watch_silence(
    ws: aiohttp.ClientWebSocketResponse, enough_s: float, *, pong_every_s: float | None = None
) -> tuple[float | None, int]:
    """Answer pings until ``enough_s`` pass without media or events (None), or until the socket is cut.

    With ``pong_every_s`` the client also sends an unsolicited pong that often. Returns how long
    the server had been silent when the socket was cut (or None) and how many pings came.
    """
    pings = 0
    last_data = time.monotonic()
    deadline = last_data + 60  # a session that never falls silent fails below, not by hanging
    while (now := time.monotonic()) - last_data < enough_s:
        assert now < deadline, "the paused session kept sending"
        try:
            message = await ws.receive(timeout=pong_every_s or enough_s)
        except TimeoutError:
            if pong_every_s is not None:
                await ws.pong(b"client keep-alive")
            continue
        if message.type in GONE:
            return time.monotonic() - last_data, pings
        if message.type == aiohttp.WSMsgType.PING:
            pings += 1
            await ws.pong(message.data)
        else:
            last_data = time.monotonic()
    return None, pings


async def status_of_announced_body(proxy: Nginx, certificates: Certificates, length: int) -> int:
    """The status nginx answers to an offer announcing ``length`` bytes (none are sent)."""
    context: ssl.SSLContext = certificates.client_context()
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.https_port, ssl=context)
    try:
        head = (
            f"POST /v1/webrtc/offer HTTP/1.1\r\nHost: 127.0.0.1:{proxy.https_port}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {length}\r\n\r\n"
        )
        writer.write(head.encode())
        await writer.drain()
        status_line = await asyncio.wait_for(reader.readline(), 10)
    finally:
        writer.close()
        await writer.wait_closed()
    return int(status_line.split()[1])


async def run(*command: str) -> tuple[int, str]:
    """Run a command without blocking the server in this event loop; its exit status and stdout."""
    process = await asyncio.create_subprocess_exec(*command, stdout=asyncio.subprocess.PIPE)
    stdout, _ = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode is not None
    return process.returncode, stdout.decode()
