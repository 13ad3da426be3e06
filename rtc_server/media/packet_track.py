"""A track of encoded, packetised frames: what one sender (the owner's or a viewer's) sends of a shared tier.

Each item is an aiortc ``RTCEncodedFrame`` (RTP payloads and timestamp) made once by the tier for
every sender; the sender's own encoder is bypassed (rtc_server/transports/tier_senders.py), so a
viewer costs RTP headers, SRTP and a send per packet, nothing more. Frames are taken only from
the sender's first read on (its connection is up): what came before would leave in a stale burst. The
queue is bounded: a
sender that falls that far behind is reported (``on_overflow``) and fed nothing more, so the tier
never waits for it. A video track starts at a keyframe: what comes before one is useless to a decoder.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable

from aiortc import MediaStreamTrack
from aiortc.mediastreams import MediaStreamError
from aiortc.rtcrtpsender import RTCEncodedFrame

__all__ = ["PacketTrack"]


class PacketTrack(MediaStreamTrack):
    """Encoded frames offered by a tier, handed to one sender in order (see the module docstring)."""

    def __init__(
        self,
        kind: str,
        *,
        max_queued: int,
        on_overflow: Callable[[], None] | None = None,
        on_first_recv: Callable[[], None] | None = None,
    ) -> None:
        super().__init__()
        self.kind = kind
        self._max_queued = max_queued
        self._queue: deque[RTCEncodedFrame] = deque()
        self._ready = asyncio.Event()
        self._on_overflow = on_overflow
        self._on_first_recv = on_first_recv
        self.waiting_for_keyframe = kind == "video"
        self.reading = False  # the sender has asked for a packet: its connection is up
        self.heard_at: float | None = None  # monotonic s of the receiver's last RTCP (set by the transport)
        self.overflowed = False
        self.packets_offered = 0
        self.packets_sent = 0
        self.packets_skipped = 0  # before the first keyframe

    @property
    def queued(self) -> int:
        # Not __len__: aiortc's sender tests its track for truth, and an empty queue would read as no track.
        return len(self._queue)

    def offer(self, frame: RTCEncodedFrame, *, keyframe: bool = False) -> None:
        """Queue ``frame`` (never blocks); past ``max_queued`` the track overflows and takes no more."""
        if self.readyState != "live" or self.overflowed or not self.reading:
            return
        if self.waiting_for_keyframe:
            if not keyframe:
                self.packets_skipped += 1
                return
            self.waiting_for_keyframe = False
        if len(self._queue) >= self._max_queued:
            self.overflowed = True
            self._queue.clear()
            if self._on_overflow is not None:
                self._on_overflow()
            return
        self.packets_offered += 1
        self._queue.append(frame)
        self._ready.set()

    async def recv(self) -> RTCEncodedFrame:  # type: ignore[override]
        if not self.reading:
            self.reading = True
            first, self._on_first_recv = self._on_first_recv, None
            if first is not None:
                first()
        while not self._queue:
            if self.readyState != "live" or self.overflowed:
                raise MediaStreamError
            self._ready.clear()
            await self._ready.wait()
        if self.readyState != "live":
            raise MediaStreamError
        self.packets_sent += 1
        return self._queue.popleft()

    def stop(self) -> None:
        super().stop()
        self._queue.clear()
        self._ready.set()
        self._on_overflow = None
        self._on_first_recv = None
