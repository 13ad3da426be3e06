"""Per-connection ICE and codec settings that aiortc does not expose as options.

This is the one module that reaches into aiortc/aioice internals; keep it that way.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from aiortc import RTCConfiguration, RTCIceServer, RTCPeerConnection
from aiortc.codecs import h264, vpx

__all__ = ["apply_bitrate_bounds", "build_rtc_configuration", "release_listeners", "restrict_host_candidates"]

logger = logging.getLogger(__name__)


def build_rtc_configuration(ice_servers: Sequence[dict[str, Any]]) -> RTCConfiguration:
    """An RTCConfiguration from the ``webrtc.ice_servers`` config entries (urls, username, credential)."""
    servers = [
        RTCIceServer(urls=entry["urls"], username=entry.get("username"), credential=entry.get("credential"))
        for entry in ice_servers
    ]
    return RTCConfiguration(iceServers=servers)


def restrict_host_candidates(pc: RTCPeerConnection, addresses: Sequence[str]) -> None:
    """Make every ICE gatherer of ``pc`` offer host candidates on ``addresses`` only.

    aioice gathers on every interface and skips loopback; tests and single-host
    deployments need to pin the addresses. Must run before setLocalDescription.
    """
    pinned = list(addresses)
    for gatherer in _ice_gatherers(pc):
        connection = gatherer._connection
        original = connection.get_component_candidates

        async def pinned_candidates(
            component: int, addresses: list[str], timeout: int = 5, *, _original: Any = original
        ) -> Any:
            return await _original(component=component, addresses=pinned, timeout=timeout)

        connection.get_component_candidates = pinned_candidates


def release_listeners(pc: RTCPeerConnection) -> None:
    """After ``pc.close()``: drop the listeners aiortc leaves on the connection's transports.

    They are bound methods of the connection, held by objects it holds: a cycle that keeps every
    closed connection (with its RTP history and buffers) until a full garbage-collector pass.
    """
    emitters: list[Any] = [pc]
    for transceiver in pc.getTransceivers():
        emitters.extend(_transport_chain(transceiver.sender.transport))
    if pc.sctp is not None:
        emitters.append(pc.sctp)
        emitters.extend(_transport_chain(pc.sctp.transport))
    for emitter in {id(e): e for e in emitters if e is not None}.values():
        emitter.remove_all_listeners()


def _transport_chain(dtls: Any) -> list[Any]:
    """A DTLS transport, its ICE transport and that one's gatherer (any may be missing)."""
    ice = getattr(dtls, "transport", None)
    return [dtls, ice, getattr(ice, "iceGatherer", None)]


def _ice_gatherers(pc: RTCPeerConnection) -> list[Any]:
    gatherers: list[Any] = []
    for transceiver in pc.getTransceivers():
        gatherers.append(transceiver.sender.transport.transport.iceGatherer)
    if pc.sctp is not None:
        gatherers.append(pc.sctp.transport.transport.iceGatherer)
    unique: dict[int, Any] = {id(g): g for g in gatherers}
    return list(unique.values())


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
