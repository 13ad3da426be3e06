"""Peer-connection glue for senders of shared tiers: the offer, the codec it chose, and what receivers report.

A tier sender sends the tier's RTP payloads as they are: its ``_next_encoded_frame`` reads them from
its PacketTrack instead of encoding (or packing) anything. It cannot make a keyframe or change its
bitrate itself: its receiver's PLI/FIR goes to the tier (``SharedMedia.request_keyframe``) and, for
the owner only, its REMB estimate sets the tier's bitrate. aiortc has no public hook for any of
this, so the sender's instance methods are replaced (aiortc calls them through the instance).
"""

from __future__ import annotations

import time
from typing import Any

from aiortc import RTCPeerConnection, RTCRtpCodecParameters, RTCRtpSender, RTCRtpTransceiver, RTCSessionDescription
from aiortc.rtcrtpsender import RTCEncodedFrame
from aiortc.rtp import RTCP_PSFB_APP, RtcpPsfbPacket, unpack_remb_fci

from rtc_server.http_errors import HttpError
from rtc_server.media.packet_track import PacketTrack
from rtc_server.media.shared_media import SharedMedia

__all__ = ["follow_receiver", "negotiated_codec", "send_as_is", "set_offer"]


async def set_offer(pc: RTCPeerConnection, sdp: str) -> None:
    """Apply a client's SDP offer; HttpError 400 for one aiortc cannot take."""
    try:
        await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
    except Exception as exc:  # aiortc raises assorted errors for malformed SDP
        raise HttpError(400, "invalid_message", f"invalid SDP offer: {exc}") from exc


def negotiated_codec(transceiver: RTCRtpTransceiver) -> RTCRtpCodecParameters:
    """The codec the answer will send on ``transceiver`` (aiortc sends its first common codec)."""
    codecs = [c for c in getattr(transceiver, "_codecs", []) if not c.mimeType.lower().endswith("/rtx")]
    if not codecs:
        raise HttpError(400, "invalid_message", f"the offer's {transceiver.kind} section has no codec this server sends")
    return codecs[0]


def send_as_is(sender: RTCRtpSender, track: PacketTrack) -> RTCRtpSender:
    """Make ``sender`` send ``track``'s payloads as they are (no encoder of its own); returns it."""

    async def next_encoded_frame(codec: Any) -> RTCEncodedFrame:
        return await track.recv()

    sender._next_encoded_frame = next_encoded_frame  # type: ignore[method-assign]
    return sender


def follow_receiver(sender: RTCRtpSender, media: SharedMedia, track: PacketTrack, *, follow_bitrate: bool) -> None:
    """Route the receiver's keyframe requests (and, with ``follow_bitrate``, its REMB) to ``media``;
    every RTCP packet for the sender marks ``track.heard_at`` (the receiver is alive)."""
    # The sender's own keyframe flag only matters to frames it encodes, which it never does here.
    sender._send_keyframe = lambda: media.request_keyframe(track)  # type: ignore[method-assign]
    handle = sender._handle_rtcp_packet

    async def handle_rtcp(packet: Any) -> None:
        track.heard_at = time.monotonic()
        if follow_bitrate and isinstance(packet, RtcpPsfbPacket) and packet.fmt == RTCP_PSFB_APP:
            try:
                bitrate, ssrcs = unpack_remb_fci(packet.fci)
            except ValueError:
                pass
            else:
                if sender._ssrc in ssrcs:
                    media.set_bitrate(bitrate)
        await handle(packet)

    sender._handle_rtcp_packet = handle_rtcp  # type: ignore[method-assign]
