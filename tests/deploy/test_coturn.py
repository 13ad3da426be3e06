"""Debian's coturn running the shipped ``deploy/coturn/turnserver.conf`` (see coturn_fixture.py).

Credentials the server hands out get allocations on all three listeners (UDP, TCP, TLS) and carry
a whole WebRTC session, with the offer going through nginx and its snippet; forged and expired
credentials are refused; the relay reaches the GPU VM's own address and no other private one;
TCP relays and a credential's thirteenth allocation at once are refused. The log lines docs/deploying.md
tells operators to look for are checked here, at the config's own log level.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import secrets
import ssl
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aioice import stun
from aioice.turn import TurnClientTcpProtocol, TurnClientUdpProtocol

from rtc_server.clients.webrtc_client import WebRTCClient, fetch_ice_servers
from rtc_server.transports.turn_credentials import turn_credential
from tests.conftest import RunningServer, make_config
from tests.deploy.coturn_fixture import SERVER_ADDRESS, TURN_ADDRESS, DeployedTurn
from tests.deploy.nginx_fixture import NginxFactory
from tests.deploy.tls import Certificates

SECRET_ENV = "RTCVS_TEST_DEPLOY_TURN_SECRET"
TOKEN_ENV = "RTCVS_TEST_DEPLOY_TOKEN"
TOKEN = "deploy-test-token-0123456789"
INIT = {"curated_prompts": ["a red fox running through fresh snow"]}
USER_QUOTA = 12  # user-quota in the shipped config
TCP_TRANSPORT = 0x06000000  # REQUESTED-TRANSPORT for a TCP relay (RFC 6062), as aioice encodes UDP's 0x11000000
ALLOCATION_LIFETIME_S = 600


@pytest.fixture
def turn(deployed_turn: DeployedTurn, monkeypatch: pytest.MonkeyPatch) -> DeployedTurn:
    monkeypatch.setenv(SECRET_ENV, deployed_turn.secret)
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    return deployed_turn


@pytest.fixture
async def https(certificates: Certificates) -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=certificates.client_context())) as session:
        yield session


def rest_credentials(secret: str, *, expires_in_s: int = 600) -> tuple[str, str]:
    username = f"{int(time.time()) + expires_in_s}:{secrets.token_hex(8)}"  # the server's own scheme
    return username, turn_credential(secret.encode(), username)


async def turn_client(
    turn: DeployedTurn, username: str, password: str, *, over: str = "udp", tls: ssl.SSLContext | None = None
) -> Any:
    """aioice's TURN client protocol, connected to coturn over UDP, TCP or (with ``tls``) TLS; nothing allocated."""
    loop = asyncio.get_running_loop()
    options: dict[str, Any] = {
        "username": username,
        "password": password,
        "lifetime": ALLOCATION_LIFETIME_S,
        "channel_refresh_time": 500,
    }
    protocol: Any
    if over == "udp":
        server = (turn.host, turn.port)
        _, protocol = await loop.create_datagram_endpoint(
            lambda: TurnClientUdpProtocol(server, **options), remote_addr=server
        )
    else:
        server = (turn.host, turn.tls_port if tls else turn.port)
        _, protocol = await loop.create_connection(
            lambda: TurnClientTcpProtocol(server, **options), host=server[0], port=server[1], ssl=tls
        )
    return protocol


@contextlib.asynccontextmanager
async def allocation(
    turn: DeployedTurn, username: str, password: str, *, over: str = "udp", tls: ssl.SSLContext | None = None
) -> AsyncIterator[Any]:
    """A TURN allocation, deleted on exit; stun.TransactionFailed when refused."""
    protocol = await turn_client(turn, username, password, over=over, tls=tls)
    try:
        await protocol.connect()
    except BaseException:
        protocol.transport.abort()
        raise
    try:
        yield protocol
    finally:
        await protocol.delete()
        # close() on a TLS transport only starts the TLS shutdown; the socket would outlive the test
        # and surface as a ResourceWarning in a later one. abort() closes it now.
        protocol.transport.abort()


async def allocate_once(turn: DeployedTurn, username: str, password: str, **options: Any) -> None:
    async with allocation(turn, username, password, **options):
        pass


async def refused_with(request: Any) -> int:
    with pytest.raises(stun.TransactionFailed) as refused:
        await request
    return int(refused.value.response.attributes["ERROR-CODE"][0])


async def wait_for_log(turn: DeployedTurn, pattern: str, timeout: float = 5.0) -> str:
    deadline = time.monotonic() + timeout
    while not (match := re.search(pattern, turn.log_text())):
        assert time.monotonic() < deadline, f"coturn never logged {pattern!r}:\n{turn.log_text()[-3000:]}"
        await asyncio.sleep(0.1)
    return match[0]


@pytest.mark.parametrize("listener", ["udp", "tcp", "tls"])
async def test_server_credentials_relay_a_whole_session_through_each_listener(
    listener: str,
    turn: DeployedTurn,
    start_server: Any,
    nginx: NginxFactory,
    https: aiohttp.ClientSession,
    certificates: Certificates,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    turn_section = {"urls": turn.urls, "secret_env": SECRET_ENV, "ttl_seconds": 600}
    server: RunningServer = await start_server(
        make_config(auth={"mode": "token", "token_envs": [TOKEN_ENV]}, webrtc={"turn": turn_section})
    )
    proxy = nginx.start(int(server.url.rsplit(":", 1)[1]))
    servers, ttl = await fetch_ice_servers(proxy.https_url, auth_token=TOKEN, http=https)
    assert ttl == 600 and servers[0]["urls"] == turn.urls
    url = turn.urls[["udp", "tcp", "tls"].index(listener)]
    one_url = [{**servers[0], "urls": [url]}]  # aiortc uses the first TURN URL only
    # aioice opens turns: with the default trust store; the test CA stands in for a public one.
    monkeypatch.setenv("SSL_CERT_FILE", str(certificates.ca))
    async with WebRTCClient(
        proxy.https_url, session_init=INIT, auth_token=TOKEN, ice_servers=one_url, relay_only=True
    ) as client:
        await client.connect(http=https)
        candidates = [line for line in client.pc.localDescription.sdp.splitlines() if line.startswith("a=candidate")]
        assert candidates and all(" typ relay " in line for line in candidates), candidates
        await client.wait_for_event("ltx2_segment_complete", lambda e: e["segment_idx"] == 0, timeout=30)
        deadline = time.monotonic() + 15
        while sum(1 for f in client.frames if f.marker and f.marker.segment_idx == 0) < 24:
            assert time.monotonic() < deadline, "a whole segment must arrive through the relay"
            await asyncio.sleep(0.05)
    user = re.escape(servers[0]["username"])
    await wait_for_log(turn, rf"user <{user}>: incoming packet ALLOCATE processed, success")
    await wait_for_log(turn, rf"user <{user}>: incoming packet (CHANNEL_BIND|CREATE_PERMISSION) processed, success")
    port = turn.tls_port if listener == "tls" else turn.port
    await wait_for_log(
        turn, rf"closed \(2nd stage\), user <{user}> realm <[^>]*> origin <[^>]*>, local {turn.host}:{port},"
    )
    if listener == "tls":
        await wait_for_log(
            turn, rf"new, realm=<[^>]*>, username=<{user}>, lifetime=\d+, cipher=[^,]+, method=TLSv1\.[23]"
        )


@pytest.mark.parametrize("spoil", ["forged", "expired"])
@pytest.mark.parametrize("over", ["udp", "tls"])
async def test_forged_and_expired_credentials_are_refused(
    spoil: str, over: str, turn: DeployedTurn, certificates: Certificates
) -> None:
    if spoil == "forged":
        username, _ = rest_credentials(turn.secret)
        password = turn_credential(b"not the secret", username)
    else:  # minted with the right secret, but its expiry has passed
        username, password = rest_credentials(turn.secret, expires_in_s=-60)
    tls = certificates.client_context() if over == "tls" else None
    assert await refused_with(allocate_once(turn, username, password, over=over, tls=tls)) == 401
    # What docs/deploying.md tells operators to look for: a 401 naming the user (the first, nameless
    # 401 of every allocation is the nonce challenge).
    await wait_for_log(turn, rf"user <{re.escape(username)}>: incoming packet \w+ processed, error 401: Unauthorized")
    # The right credentials on the same listener work, so it was the credentials that were refused.
    async with allocation(turn, *rest_credentials(turn.secret), over=over, tls=tls) as granted:
        assert granted.relayed_address[0] == TURN_ADDRESS


async def test_the_relay_reaches_the_vm_address_and_no_other_private_one(turn: DeployedTurn) -> None:
    async with allocation(turn, *rest_credentials(turn.secret)) as relay:
        # allowed-peer-ip: the GPU VM's address, where rtc-server's host candidates are.
        await relay.channel_bind(0x4000, (SERVER_ADDRESS, 40000))
        # Permissions are refused on the spot: nothing is ever sent to these addresses.
        forbidden = [
            TURN_ADDRESS,
            "127.0.0.3",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.1",
        ]
        for number, address in enumerate(forbidden, start=0x4001):
            assert await refused_with(relay.channel_bind(number, (address, 40000))) == 403, address
    await wait_for_log(turn, r"incoming packet CHANNEL_BIND processed, error 403: Forbidden IP")


async def test_tcp_relays_are_refused(turn: DeployedTurn) -> None:
    client = await turn_client(turn, *rest_credentials(turn.secret))
    try:
        request = stun.Message(message_method=stun.Method.ALLOCATE, message_class=stun.Class.REQUEST)
        request.attributes["LIFETIME"] = ALLOCATION_LIFETIME_S
        request.attributes["REQUESTED-TRANSPORT"] = TCP_TRANSPORT
        assert await refused_with(client.request_with_retry(request)) == 442  # Unsupported Transport Protocol
    finally:
        client.transport.abort()


async def test_one_credential_gets_twelve_allocations_at_once_not_thirteen(turn: DeployedTurn) -> None:
    username, password = rest_credentials(turn.secret)
    async with contextlib.AsyncExitStack() as stack:
        for _ in range(USER_QUOTA):
            await stack.enter_async_context(allocation(turn, username, password))
        assert await refused_with(allocate_once(turn, username, password)) == 486
    await wait_for_log(turn, r"error 486: Allocation Quota Reached")
