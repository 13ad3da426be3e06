"""A headless WebSocket client of ``/v1/stream``: control events plus fMP4 segments, as an MSE player gets them."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
from dataclasses import dataclass, field
from typing import Any, Self

import aiohttp

from rtc_server.clients.events import EventLog

__all__ = ["ReceivedSegment", "WebSocketClient"]


@dataclass
class ReceivedSegment:
    """One segment's media as received: init segment, media chunks, and the completion message."""

    segment_idx: int
    mime: str
    init: bytes = b""
    chunks: list[bytes] = field(default_factory=list)
    complete: dict[str, Any] | None = None
    first_chunk_at: float | None = None  # monotonic s: when its first media chunk (after the init) arrived
    completed_at: float | None = None

    @property
    def data(self) -> bytes:
        """Init followed by the media chunks: what an MSE client appends for this segment."""
        return self.init + b"".join(self.chunks)


class WebSocketClient(EventLog):
    """One session over ``/v1/stream``; ``pause_reading()`` simulates a client that stops reading."""

    def __init__(
        self,
        base_url: str,
        *,
        session_init: dict[str, Any] | None = None,
        receive_buffer_bytes: int | None = None,
        auth_token: str | None = None,
    ) -> None:
        super().__init__()
        # A browser cannot set headers on a WebSocket: the token rides as a subprotocol, as the page sends it.
        self._protocols = ("rtcvs", f"bearer.{auth_token}") if auth_token else ()
        self._url = base_url.rstrip("/").replace("http://", "ws://", 1) + "/v1/stream"
        self._session_init = session_init
        self._receive_buffer_bytes = receive_buffer_bytes
        self._http: aiohttp.ClientSession | None = None
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self.segments: list[ReceivedSegment] = []
        self._current: ReceivedSegment | None = None
        self._reader: asyncio.Task[None] | None = None
        self._reading = asyncio.Event()
        self._reading.set()
        self.close_code: int | None = None
        self.closed = asyncio.Event()
        self.binary_before_init = 0

    async def connect(self, *, send_init: bool = True) -> None:
        self._http = aiohttp.ClientSession()
        self.ws = await self._http.ws_connect(self._url, max_msg_size=0, protocols=self._protocols)
        if self._receive_buffer_bytes is not None:
            # A small window makes "stops reading" felt by the server at once, like a slow network.
            sock = self.ws.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self._receive_buffer_bytes)
        self._reader = asyncio.create_task(self._read_forever(), name="ws-client-reader")
        if send_init:
            await self.send({"type": "session_init_v2", **(self._session_init or {})})

    async def send(self, message: dict[str, Any] | str | bytes) -> None:
        """Send a message: a dict as JSON text, str as text, bytes as a binary frame."""
        assert self.ws is not None
        if isinstance(message, bytes):
            await self.ws.send_bytes(message)
        else:
            await self.ws.send_str(json.dumps(message) if isinstance(message, dict) else message)

    def pause_reading(self) -> None:
        self._reading.clear()

    def resume_reading(self) -> None:
        self._reading.set()

    @property
    def complete_segments(self) -> list[ReceivedSegment]:
        return [s for s in self.segments if s.complete is not None]

    async def _read_forever(self) -> None:
        assert self.ws is not None
        try:
            while True:
                await self._reading.wait()
                message = await self.ws.receive()
                if message.type == aiohttp.WSMsgType.TEXT:
                    self._on_text(json.loads(message.data))
                elif message.type == aiohttp.WSMsgType.BINARY:
                    self._on_binary(message.data)
                else:
                    break
        finally:
            self.close_code = self.ws.close_code
            self.closed.set()

    def _on_text(self, event: dict[str, Any]) -> None:
        kind = event.get("type")
        if kind == "media_init":
            self._current = ReceivedSegment(segment_idx=event["segment_idx"], mime=event["mime"])
            self.segments.append(self._current)
        elif kind == "media_segment_complete" and self._current is not None:
            self._current.complete = event
            self._current.completed_at = time.monotonic()
            self._current = None
        self.record_event(event)

    def _on_binary(self, data: bytes) -> None:
        if self._current is None:
            self.binary_before_init += 1
        elif not self._current.init:
            self._current.init = data
        else:
            if not self._current.chunks:
                self._current.first_chunk_at = time.monotonic()
            self._current.chunks.append(data)

    async def wait_closed(self, timeout: float = 10.0) -> int | None:
        await asyncio.wait_for(self.closed.wait(), timeout)
        return self.close_code

    async def close(self) -> None:
        if self.ws is not None and not self.ws.closed:
            await self.ws.close()
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        if self._http is not None:
            await self._http.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
