"""Where the server's ICE sockets bind and what it announces: port range, public addresses, no leaks."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path
from typing import Any

import pytest

from rtc_server.app import REGISTRY, WEBRTC
from rtc_server.clients.webrtc_client import OfferRejected, WebRTCClient
from rtc_server.config import WebRTCConfig
from rtc_server.transports.ice_gathering import PortRangeFull, bind_udp_socket, public_address_map
from tests.conftest import RunningServer, make_config
from tests.waiting import wait_until

INIT = {"curated_prompts": ["a red fox running through fresh snow"]}


def udp_ports_bound_in(low: int, high: int) -> list[int]:
    """Local UDP ports inside [low, high] that any socket of this network namespace holds."""
    ports = []
    for table in ("/proc/net/udp", "/proc/net/udp6"):
        path = Path(table)
        if not path.exists():
            continue
        for line in path.read_text().splitlines()[1:]:
            port = int(line.split()[1].rsplit(":", 1)[1], 16)
            if low <= port <= high:
                ports.append(port)
    return sorted(ports)


def answer_candidates(client: WebRTCClient) -> list[list[str]]:
    sdp = client.pc.remoteDescription.sdp
    return [line.split() for line in sdp.splitlines() if line.startswith("a=candidate:")]


def test_public_addresses_map_every_local_address_of_their_version_or_the_one_named() -> None:
    entries = ["203.0.113.7", "2001:db8::7", "198.51.100.9/10.0.0.5"]
    assert public_address_map(entries, "10.0.0.4") == ["203.0.113.7"]
    assert public_address_map(entries, "10.0.0.5") == ["203.0.113.7", "198.51.100.9"]
    assert public_address_map(entries, "fd00::4") == ["2001:db8::7"]
    assert public_address_map([], "10.0.0.4") == []


def test_config_refuses_a_bad_public_address_or_port_range() -> None:
    with pytest.raises(ValueError, match="public_addresses"):
        WebRTCConfig.model_validate({"public_addresses": ["my-vm.example.com"]})
    with pytest.raises(ValueError, match="udp_port_range"):
        WebRTCConfig.model_validate({"udp_port_range": [50010, 50000]})
    assert WebRTCConfig.model_validate({"udp_port_range": [50000, 50000]}).udp_port_range == (50000, 50000)


def test_binding_fills_the_range_then_says_it_is_full() -> None:
    low, high = 20950, 20953
    sockets = [bind_udp_socket("127.0.0.1", (low, high)) for _ in range(4)]
    try:
        assert sorted(s.getsockname()[1] for s in sockets) == [20950, 20951, 20952, 20953]
        with pytest.raises(PortRangeFull, match="20950-20953"):
            bind_udp_socket("127.0.0.1", (low, high))
    finally:
        for sock in sockets:
            sock.close()
    with pytest.raises(OSError):  # not a full range: an address this machine does not have
        bind_udp_socket("192.0.2.1", (low, high))


async def test_answer_candidates_use_the_port_range_and_announce_the_public_address(start_server: Any) -> None:
    config = make_config(webrtc={"udp_port_range": [20900, 20909], "public_addresses": ["203.0.113.7"]})
    server = await start_server(config)
    async with WebRTCClient(server.url, session_init=INIT) as client:
        await client.connect()
        candidates = answer_candidates(client)
        by_type = {c[7]: c for c in candidates}
        assert set(by_type) == {"host", "srflx"}, candidates
        host, public = by_type["host"], by_type["srflx"]
        assert host[4] == "127.0.0.1" and 20900 <= int(host[5]) <= 20909
        assert public[4] == "203.0.113.7" and public[5] == host[5], "the public address keeps the local port"
        assert public[8:12] == ["raddr", "127.0.0.1", "rport", host[5]]
        assert udp_ports_bound_in(20900, 20909) == [int(host[5])]
        await wait_until(lambda: client.frame_count > 0, 15, "no frame next to an unreachable public candidate")


async def test_public_addresses_can_replace_the_local_ones(start_server: Any) -> None:
    config = make_config(
        webrtc={"public_addresses": ["203.0.113.7/127.0.0.1"], "announce_local_addresses": False}
    )
    server = await start_server(config)
    async with WebRTCClient(server.url, session_init=INIT) as client:
        await client.connect()
        candidates = answer_candidates(client)
        assert {(c[4], c[7]) for c in candidates} == {("203.0.113.7", "host")}, candidates
        # The client's checks to that address go nowhere here; the server's own checks reach the
        # client from the local socket, which then pairs with it as a peer-reflexive candidate.
        await wait_until(lambda: client.frame_count > 0, 15, "no frame")


async def test_a_full_port_range_refuses_the_offer_with_503_and_leaks_nothing(start_server: Any) -> None:
    server = await start_server(make_config(webrtc={"udp_port_range": [20800, 20801]}))
    clients = [WebRTCClient(server.url) for _ in range(3)]
    try:
        for client in clients[:2]:
            await client.connect()
        assert udp_ports_bound_in(20800, 20801) == [20800, 20801]
        with pytest.raises(OfferRejected) as refused:
            await clients[2].connect()
        assert refused.value.status == 503
        assert refused.value.body["error"]["code"] == "ice_ports_exhausted"
        assert refused.value.body["error"]["retryable"] is True
        assert int(refused.value.headers["Retry-After"]) > 0
        assert len(server.app[REGISTRY]) == 2 and len(server.app[WEBRTC]) == 2
        await clients[0].close()
        await wait_until(lambda: len(server.app[WEBRTC]) == 1, 10, "the closed peer was kept")
        await wait_until(lambda: len(udp_ports_bound_in(20800, 20801)) == 1, 5, "its port was kept")
        late = WebRTCClient(server.url)
        clients.append(late)
        await late.connect()  # the freed port serves the next offer
    finally:
        for client in clients:
            await client.close()
    await wait_until(lambda: len(server.app[WEBRTC]) == 0, 10, "peers left over")
    await wait_until(lambda: udp_ports_bound_in(20800, 20801) == [], 5, "sockets left over")


async def test_fifty_sessions_churned_in_a_ten_port_range_leave_no_socket(start_server: Any) -> None:
    low, high = 20700, 20709
    server: RunningServer = await start_server(
        make_config(
            webrtc={"udp_port_range": [low, high]},
            streaming={"max_sessions": 16},
            limits={"sessions_per_client": 16, "offers_per_minute": 1000},
        )
    )
    served = refused = 0

    async def session() -> bool:
        async with WebRTCClient(server.url) as client:
            try:
                await client.connect()
            except OfferRejected as exc:
                assert exc.status == 503 and exc.body["error"]["code"] == "ice_ports_exhausted", exc.body
                return False
            await client.wait_channel_open(timeout=10)
            return True

    while served < 50:
        results = await asyncio.gather(*(session() for _ in range(min(12, 50 - served + 2))))
        served += sum(results)
        refused += len(results) - sum(results)
    assert refused > 0, "waves of 12 in 10 ports must have met a full range"
    await wait_until(lambda: len(server.app[WEBRTC]) == 0, 15, "peers left over")
    await wait_until(lambda: udp_ports_bound_in(low, high) == [], 5, "sockets left over in the range")
    assert len(server.app[REGISTRY]) == 0
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", low))  # and the range is really free
