"""One WebSocket session relayed between a client and a replica, both ways, frame by frame.

Frames pass as they are: text as text, binary as binary, one at a time, each send awaited, so a
slow client slows the reads from the replica (backpressure reaches the replica, whose own slow-client
handling then applies) and nothing piles up in the router. The only look inside is at the replica's
text frames, and only at those naming a ``session_id`` (a substring test first), until the
``session_info`` message says which session this is: the router records where it lives.

Close codes travel across: a client's close code is sent on to the replica and a replica's to the
client. A replica that vanishes without a close frame (its process died, its host went away) is a
failure: the client gets ``error{code:"worker_failed", retryable:true}`` and close 1011, and may
resume the session through the router on another replica. A client that vanishes is a ``1001``
(going away) for the replica.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import json
import logging
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp import WSCloseCode, WSMsgType, web

from rtc_server.protocol import ErrorMessage, serialize

__all__ = ["BridgeEnd", "Side", "WebSocketBridge", "sendable_close_code"]

logger = logging.getLogger(__name__)

CLOSE_TIMEOUT_S = 2.0  # longest wait for a close to complete (or for the other direction to end)
SCAN_MAX_CHARS = 64 * 1024  # text frames longer than this are never parsed for a session id
SESSION_ID_MARK = '"session_id"'
SESSION_INFO = "session_info"

SessionIdCallback = Callable[[str], Coroutine[Any, Any, None]]


class Side(enum.Enum):
    CLIENT = "client"
    REPLICA = "replica"


@dataclass(frozen=True)
class BridgeEnd:
    """How a bridged session ended: the side that ended it first and its close code (None: no close frame)."""

    side: Side
    code: int | None
    reason: str = ""

    @property
    def normal(self) -> bool:
        """A normal end of the session (close 1000 from either side)."""
        return self.code == WSCloseCode.OK

    @property
    def replica_failed(self) -> bool:
        return self.side is Side.REPLICA and self.code is None


def sendable_close_code(code: int | None, fallback: int) -> int:
    """``code`` if a close frame may carry it (RFC 6455 §7.4), else ``fallback`` (1005/1006/1015 may not)."""
    if code is None:
        return fallback
    if code in (1000, 1001, 1002, 1003) or 1007 <= code <= 1014 or 3000 <= code <= 4999:
        return code
    return fallback


class WebSocketBridge:
    """Relays one client socket to one replica socket until either side ends; ``run()`` says how it ended."""

    def __init__(
        self,
        client: web.WebSocketResponse,
        replica: aiohttp.ClientWebSocketResponse,
        *,
        label: str,
        on_session_id: SessionIdCallback | None = None,
    ) -> None:
        self._client = client
        self._replica = replica
        self._label = label
        self._on_session_id = on_session_id
        self._scanning = on_session_id is not None
        self._stopping = False
        self._side_tasks: set[asyncio.Task[None]] = set()
        self.session_id: str | None = None
        self.end: BridgeEnd | None = None  # set as soon as one side has ended, even if run() is then cancelled

    # -- the two directions ------------------------------------------------------------

    # Each direction returns how its source ended, or None when a send to its destination failed:
    # the destination's own direction then says how that side ended (a close frame with its code,
    # or none), which the sending side cannot tell.

    async def _replica_to_client(self) -> BridgeEnd | None:
        client, replica = self._client, self._replica
        while True:
            message = await replica.receive()
            try:
                if message.type is WSMsgType.TEXT:
                    if self._scanning and SESSION_ID_MARK in message.data:
                        self._scan(message.data)
                    await client.send_str(message.data)
                elif message.type is WSMsgType.BINARY:
                    await client.send_bytes(message.data)
                elif message.type is WSMsgType.CLOSE:
                    return BridgeEnd(Side.REPLICA, message.data, message.extra or "")
                else:  # CLOSED / ERROR: the connection is gone without a close frame (CLOSING: we closed it)
                    return BridgeEnd(Side.REPLICA, None, str(replica.exception() or "connection lost"))
            except ConnectionResetError:  # the client's connection is closing under our send
                return None

    async def _client_to_replica(self) -> BridgeEnd | None:
        client, replica = self._client, self._replica
        while True:
            message = await client.receive()
            try:
                if message.type is WSMsgType.TEXT:
                    await replica.send_str(message.data)
                elif message.type is WSMsgType.BINARY:
                    await replica.send_bytes(message.data)
                elif message.type is WSMsgType.CLOSE:
                    return BridgeEnd(Side.CLIENT, message.data, message.extra or "")
                else:
                    return BridgeEnd(Side.CLIENT, None, str(client.exception() or "connection lost"))
            except ConnectionResetError:  # the replica's connection is closing under our send
                return None

    def _scan(self, text: str) -> None:
        """Learn the session id from ``session_info`` (or, from older replicas, any message carrying one)."""
        if len(text) > SCAN_MAX_CHARS:
            return
        try:
            event = json.loads(text)
        except ValueError:
            return
        if not isinstance(event, dict) or not isinstance(event.get("session_id"), str):
            return
        if event.get("type") == SESSION_INFO:
            self._scanning = False  # said once per session: nothing more to look for
        session_id = event["session_id"]
        if session_id != self.session_id and self._on_session_id is not None:
            self.session_id = session_id
            # In a task of its own: a slow session map must not hold up the stream.
            task = asyncio.create_task(self._on_session_id(session_id), name=f"{self._label} session id")
            self._side_tasks.add(task)
            task.add_done_callback(self._side_tasks.discard)

    # -- running and ending ---------------------------------------------------------------

    async def run(self) -> BridgeEnd:
        """Relay until either side ends, end the other side to match, and say how it ended."""
        up = asyncio.create_task(self._replica_to_client(), name=f"{self._label} replica->client")
        down = asyncio.create_task(self._client_to_replica(), name=f"{self._label} client->replica")
        try:
            await asyncio.wait({up, down}, return_when=asyncio.FIRST_COMPLETED)
            end = self._known_end(up, down)
            if end is None:  # a send failed: wait (briefly) for that side's own account
                await asyncio.wait({up, down}, timeout=CLOSE_TIMEOUT_S)
                end = self._known_end(up, down) or self._unexplained_end(up)
            self.end = end
            if not self._stopping:
                await self._end_other_side(end)
            await self._settle(up, down)
        finally:
            if self.end is None:
                # run() was cancelled (its handler was) before either side's end was known: let the
                # directions finish what they were doing for a moment, so a normal end still counts.
                await asyncio.wait([up, down], timeout=CLOSE_TIMEOUT_S)
                self.end = self._known_end(up, down)
            for task in (up, down):
                task.cancel()
            await asyncio.wait([up, down])
            await self._settle(*self._side_tasks)  # the session id is recorded before anyone forgets it
            for task in [*self._side_tasks]:
                task.cancel()
            if self._side_tasks:
                await asyncio.wait([*self._side_tasks])
        return end

    def _known_end(self, up: asyncio.Task[BridgeEnd | None], down: asyncio.Task[BridgeEnd | None]) -> BridgeEnd | None:
        """How the session ended, as far as the finished directions tell; the replica's account first
        (when both ended at once it knows whether the session failed)."""
        for task in (up, down):
            if task.done() and not task.cancelled():
                end = self._outcome(task)
                if end is not None:
                    return end
        return None

    def _unexplained_end(self, up: asyncio.Task[BridgeEnd | None]) -> BridgeEnd:
        """A send failed and the side sent to never said why: that side vanished."""
        failed_to_client = up.done() and not up.cancelled()
        side = Side.CLIENT if failed_to_client else Side.REPLICA
        return BridgeEnd(side, None, "connection lost while relaying")

    def _outcome(self, task: asyncio.Task[BridgeEnd | None]) -> BridgeEnd | None:
        try:
            return task.result()
        except Exception as exc:  # a bug in a direction: fail the session loudly, never hang it
            logger.exception("%s: bridge direction failed", self._label)
            return BridgeEnd(Side.REPLICA, None, f"router error: {exc}")

    async def _end_other_side(self, end: BridgeEnd) -> None:
        if end.side is Side.REPLICA:
            if end.code is None:
                logger.warning("%s: replica connection lost: %s", self._label, end.reason)
                error = ErrorMessage(
                    code="worker_failed", message="the replica serving this session failed", retryable=True
                )
                with contextlib.suppress(ConnectionResetError):
                    await self._client.send_str(serialize(error))
                await self._close_client(WSCloseCode.INTERNAL_ERROR, b"replica failed")
            else:
                code = sendable_close_code(end.code, WSCloseCode.OK)
                await self._close_client(code, end.reason.encode()[:123])
        else:
            # A close frame without a sendable code still meant "done" (1000); no close frame at all
            # means the client went away (1001).
            fallback = WSCloseCode.OK if end.code is not None else WSCloseCode.GOING_AWAY
            await self._close_replica(sendable_close_code(end.code, fallback), end.reason.encode()[:123])

    async def _close_client(self, code: int, message: bytes) -> None:
        # Bounded: a client that stopped reading would otherwise hold the close (and this task) forever.
        with contextlib.suppress(TimeoutError, ConnectionResetError):
            async with asyncio.timeout(CLOSE_TIMEOUT_S):
                await self._client.close(code=code, message=message)

    async def _close_replica(self, code: int, message: bytes) -> None:
        with contextlib.suppress(TimeoutError, ConnectionResetError):
            async with asyncio.timeout(CLOSE_TIMEOUT_S):
                await self._replica.close(code=code, message=message)

    async def _settle(self, *tasks: asyncio.Future[Any]) -> None:
        """Give ``tasks`` a moment to finish on their own (what is left is then cancelled)."""
        pending = [task for task in tasks if not task.done()]
        if pending:
            await asyncio.wait(pending, timeout=CLOSE_TIMEOUT_S)

    @property
    def stopping(self) -> bool:
        """Whether ``shutdown()`` ended this session (its end is then no failure of either side)."""
        return self._stopping

    async def shutdown(self) -> None:
        """The router is stopping: close both sides with 1001 (going away); ``run()`` then returns."""
        self._stopping = True
        await self._close_client(WSCloseCode.GOING_AWAY, b"router shutdown")
        await self._close_replica(WSCloseCode.GOING_AWAY, b"router shutdown")
