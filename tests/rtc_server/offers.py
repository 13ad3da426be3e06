"""A real SDP offer (video receive + the control data channel), as a browser or aiortc client sends it."""

from __future__ import annotations

from aiortc import RTCPeerConnection

from rtc_server.transports.ice import build_rtc_configuration, restrict_host_candidates


async def real_offer_sdp() -> str:
    pc = RTCPeerConnection(build_rtc_configuration([]))
    try:
        pc.addTransceiver("video", direction="recvonly")
        pc.createDataChannel("control")
        restrict_host_candidates(pc, ["127.0.0.1"])
        await pc.setLocalDescription(await pc.createOffer())
        return str(pc.localDescription.sdp)
    finally:
        await pc.close()
