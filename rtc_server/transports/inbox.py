"""One connection's inbound control messages: rate-limited, checked at the door, delivered in order.

Both transports feed it. A WebSocket is read one message at a time, so a client over its rate is
simply read more slowly (``receive`` waits; TCP pushes back on the sender and nothing piles up
here). A data channel hands over messages as they arrive (``push``): they queue, bounded; a
message beyond the rate or the bound is dropped unread and the client told ``rate_limited``, at
most once a second. Messages go through the one inbound path (``rtc_server.inbound``): every fault
is answered with ``error{invalid_message}`` and never ends the session; large ones are parsed off
the event loop.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque

from rtc_server.config import LimitsConfig
from rtc_server.controller import SessionController
from rtc_server.inbound import INLINE_PARSE_MAX_BYTES, parse_inbound
from rtc_server.protocol import ClientMessage, InvalidMessage
from rtc_server.rate_limit import TokenBucket
from rtc_server.tasks import cancel_and_wait

__all__ = ["ControlInbox", "parse_control"]

logger = logging.getLogger(__name__)

DROP_NOTICE_INTERVAL_S = 1.0  # at most one rate_limited notice a second for dropped messages


async def parse_control(data: str | bytes, *, limits: LimitsConfig, max_bytes: int) -> ClientMessage:
    """``parse_inbound`` for a text message, in a thread when it is large; InvalidMessage on any fault."""
    if isinstance(data, bytes):
        raise InvalidMessage("binary messages are not accepted on the control channel; send JSON text")
    if len(data) > INLINE_PARSE_MAX_BYTES:
        return await asyncio.to_thread(parse_inbound, data, limits=limits, max_bytes=max_bytes)
    return parse_inbound(data, limits=limits, max_bytes=max_bytes)


class ControlInbox:
    """Delivers one connection's control messages to its session's controller."""

    def __init__(self, *, controller: SessionController, limits: LimitsConfig, max_message_bytes: int) -> None:
        self._controller = controller
        self._limits = limits
        self._max_bytes = max_message_bytes
        self._bucket = TokenBucket(rate_per_s=limits.messages_per_second, burst=limits.message_burst)
        self._queue: deque[str | bytes] = deque()
        self._queued_bytes = 0
        self._arrived = asyncio.Event()
        self._consumer: asyncio.Task[None] | None = None
        self._last_notice = -DROP_NOTICE_INTERVAL_S
        self.dropped = 0

    async def receive(self, data: str | bytes) -> None:
        """One message read from a stream (WebSocket): over the rate, wait first."""
        delay = self._bucket.retry_after_s()
        if delay > 0:
            await asyncio.sleep(delay)
        self._bucket.try_take()
        await self._deliver(data)
        await asyncio.sleep(0)  # one message per loop turn: a fast sender must not starve the pacers

    def push(self, data: str | bytes) -> None:
        """One message handed over by a callback (data channel); never blocks."""
        size = len(data)
        room = len(self._queue) < self._limits.message_burst and self._queued_bytes + size <= self._max_bytes
        if not room or not self._bucket.try_take():
            self._drop()
            return
        self._queue.append(data)
        self._queued_bytes += size
        self._arrived.set()
        if self._consumer is None:
            self._consumer = asyncio.create_task(self._consume(), name="control-inbox")

    async def close(self) -> None:
        """Stop delivering; what is queued is dropped."""
        self._queue.clear()
        self._queued_bytes = 0
        if self._consumer is not None:
            await cancel_and_wait(self._consumer)
            self._consumer = None

    def _drop(self) -> None:
        self.dropped += 1
        now = time.monotonic()
        if now - self._last_notice >= DROP_NOTICE_INTERVAL_S:
            self._last_notice = now
            retry_s = self._bucket.retry_after_s()
            self._controller.report_error(
                "rate_limited",
                f"too many control messages (at most {self._limits.messages_per_second:g}/s); "
                f"{self.dropped} dropped so far, retry in {retry_s:.1f} s",
                retryable=True,
            )

    async def _consume(self) -> None:
        while True:
            while not self._queue:
                self._arrived.clear()
                await self._arrived.wait()
            data = self._queue.popleft()
            self._queued_bytes -= len(data)
            await self._deliver(data)
            await asyncio.sleep(0)  # one message per loop turn: a fast sender must not starve the pacers

    async def _deliver(self, data: str | bytes) -> None:
        try:
            message = await parse_control(data, limits=self._limits, max_bytes=self._max_bytes)
        except InvalidMessage as exc:
            self._controller.report_error("invalid_message", str(exc))
            return
        self._controller.handle(message)
