"""Per-connection ICE and codec settings that aiortc does not expose as options.

With :mod:`rtc_server.transports.ice_gathering` (how candidates are gathered), this is the one
module that reaches into aiortc/aioice internals; keep it that way.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from aiortc import RTCConfiguration, RTCIceServer, RTCPeerConnection
from aiortc.codecs import h264, vpx
from aiortc.rtcconfiguration import RTCIceTransportPolicy

from rtc_server.transports.ice_gathering import (
    GatheringLog,
    GatheringPolicy,
    ice_gatherers,
    install_gathering,
    transport_chain,
)

__all__ = [
    "apply_bitrate_bounds",
    "build_rtc_configuration",
    "recheck_on_peer_checks",
    "refuse_invalid_text_gently",
    "release_listeners",
    "restrict_host_candidates",
]

_WEBRTC_STRING = 51  # SCTP payload protocol id of a data-channel text message (RFC 8831)

logger = logging.getLogger(__name__)


def build_rtc_configuration(ice_servers: Sequence[dict[str, Any]], *, relay_only: bool = False) -> RTCConfiguration:
    """An RTCConfiguration from ICE server entries (urls, username, credential), as in ``webrtc.ice_servers``.

    ``relay_only`` is ``iceTransportPolicy: "relay"``: only TURN-relayed candidates are gathered.
    """
    servers = [
        RTCIceServer(urls=entry["urls"], username=entry.get("username"), credential=entry.get("credential"))
        for entry in ice_servers
    ]
    policy = RTCIceTransportPolicy.RELAY if relay_only else RTCIceTransportPolicy.ALL
    return RTCConfiguration(iceServers=servers, iceTransportPolicy=policy)


def restrict_host_candidates(pc: RTCPeerConnection, addresses: Sequence[str]) -> GatheringLog:
    """Make every ICE gatherer of ``pc`` offer host candidates on ``addresses`` only.

    aioice gathers on every interface and skips loopback; tests and single-host
    deployments need to pin the addresses. Must run before setLocalDescription.
    """
    return install_gathering(pc, GatheringPolicy(host_addresses=list(addresses)))


def recheck_on_peer_checks(pc: RTCPeerConnection) -> None:
    """Resend an in-progress connectivity check at once when the peer's check arrives on its pair.

    RFC 8445 section 7.3.1.4 triggers a new check then; aioice waits for its retransmission timer
    (500 ms). Through TURN that wait is paid on every session: the server's first check reaches the
    client's relay before the client has made the relay's permission, coturn drops it, and the
    peer's own check is what says the path is open now. Call before setLocalDescription.
    """
    for gatherer in ice_gatherers(pc):
        connection = gatherer._connection
        original = connection.check_incoming

        def check_incoming(message: Any, addr: tuple[str, int], protocol: Any, *, _original: Any = original) -> None:
            _original(message, addr, protocol)
            for transaction in list(protocol.transactions.values()):
                if transaction._Transaction__addr == addr and not transaction._Transaction__future.done():
                    protocol.send_stun(transaction._Transaction__request, addr)

        connection.check_incoming = check_incoming


def refuse_invalid_text_gently(pc: RTCPeerConnection) -> None:
    """Hand a data-channel text message that is not UTF-8 to its listeners instead of failing.

    aiortc decodes text messages inside its SCTP receive path, where a UnicodeDecodeError ends the
    association, and with it the session: one bad message from a client must not do that. The
    bytes arrive decoded with ``surrogateescape``, which the inbound path refuses as not UTF-8.
    Call after the remote description (it creates ``pc.sctp``).
    """
    sctp = pc.sctp
    if sctp is None:
        return
    original = sctp._data_channel_receive

    async def receive(stream_id: int, pp_id: int, data: bytes) -> None:
        channel = sctp._data_channels.get(stream_id) if pp_id == _WEBRTC_STRING else None
        if channel is None:
            await original(stream_id, pp_id, data)
            return
        channel.emit("message", data.decode("utf-8", errors="surrogateescape"))

    sctp._data_channel_receive = receive  # type: ignore[method-assign]


def release_listeners(pc: RTCPeerConnection) -> None:
    """After ``pc.close()``: drop the listeners aiortc leaves on the connection's transports, and
    the wrappers this module installed.

    They are bound methods of the connection, held by objects it holds: a cycle that keeps every
    closed connection (with its RTP history and buffers) until a full garbage-collector pass.
    """
    for gatherer in ice_gatherers(pc):
        vars(gatherer._connection).pop("get_component_candidates", None)
        vars(gatherer._connection).pop("check_incoming", None)
    if pc.sctp is not None:
        vars(pc.sctp).pop("_data_channel_receive", None)
    emitters: list[Any] = [pc]
    for transceiver in pc.getTransceivers():
        emitters.extend(transport_chain(transceiver.sender.transport))
    if pc.sctp is not None:
        emitters.append(pc.sctp)
        emitters.extend(transport_chain(pc.sctp.transport))
    for emitter in {id(e): e for e in emitters if e is not None}.values():
        emitter.remove_all_listeners()


def apply_bitrate_bounds(*, min_bps: int, max_bps: int, start_bps: int) -> None:
    """Set aiortc's encoder bitrate bounds (bits per second).

    aiortc reads these from module constants when an encoder starts and when
    the receiver's REMB moves the target, so this is process-wide by nature;
    the app calls it once at startup from the config.
    """
    for codec in (vpx, h264):
        codec.MIN_BITRATE = min_bps  # type: ignore[attr-defined]
        codec.MAX_BITRATE = max_bps  # type: ignore[attr-defined]
        codec.DEFAULT_BITRATE = start_bps  # type: ignore[attr-defined]
    logger.info("encoder bitrate bounds: %d..%d bps, start %d bps", min_bps, max_bps, start_bps)
