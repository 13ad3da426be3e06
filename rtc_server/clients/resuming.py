"""A headless session that survives its replica: on a drop it reconnects with its resume token.

The server sends ``session_info{session_id, resume_token}`` once a GPU is assigned. When the
connection drops, this client opens a new one to the same base URL (the router, which places it on
a healthy replica) with ``session_init_v2.resume_session`` and goes on recording into the same event
log, frame list and segment list, so a caller sees one stream whose segment indices continue.

A drop is: a retryable ``gpu_unavailable``/``worker_failed`` error (a replica draining or a bridge
failing), a WebSocket closed with any code but 1000, a peer connection that failed or closed, or,
over WebRTC, frames that stopped while the stream should be flowing, confirmed by asking the base
URL for the session's frame log (a dead replica cannot answer it; a slow generator can). An
``ltx2_stream_complete`` after such a drop (a shutting-down server ends the old connection with
``error{gpu_unavailable, retryable}`` then ``ltx2_stream_complete{stop_requested}``) is not the end of
the session: it is left out of the event log, and the session resumes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, Self

import aiohttp

from rtc_server.clients.events import EventLog
from rtc_server.clients.webrtc_client import OfferRejected, ReceivedFrame, WebRTCClient
from rtc_server.clients.ws_client import ReceivedSegment, WebSocketClient

__all__ = ["Reconnect", "ResumeRefused", "ResumingSession"]

logger = logging.getLogger(__name__)

RETRYABLE_DROPS = frozenset({"gpu_unavailable", "worker_failed"})
NORMAL_CLOSE = 1000
FLOWING_STALL_S = 0.5  # no frame this long while frames should flow: ask whether the replica is alive
PAUSED_PROBE_S = 2.0  # while paused no frames flow: ask this often instead
PROBE_TIMEOUT_S = 0.5
RETRY_DELAYS_S = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0)  # between attempts to resume


class ResumeRefused(RuntimeError):
    """No replica took the session back (every attempt failed, or the token was refused)."""


@dataclass(frozen=True)
class Reconnect:
    """One resume: when the drop was noticed, why, and when the new connection carried the session again."""

    noticed_at: float
    reason: str
    resumed_at: float | None = None


class ResumingSession(EventLog):
    """One session over ``transport``, resumed on another replica whenever its connection drops."""

    def __init__(
        self,
        base_url: str,
        *,
        transport: Literal["webrtc", "websocket"],
        session_init: dict[str, Any] | None = None,
        auth_token: str | None = None,
        on_frame: Callable[[ReceivedFrame], None] | None = None,
    ) -> None:
        super().__init__()
        self._base_url = base_url.rstrip("/")
        self.transport = transport
        self._init = dict(session_init or {})
        self._auth_token = auth_token
        self._on_frame = on_frame
        self.frames: list[ReceivedFrame] = []
        self.segments: list[ReceivedSegment] = []
        self.reconnects: list[Reconnect] = []
        self.session_id: str | None = None
        self.resume_token: str | None = None
        self.paused = bool(self._init.get("generation_paused", False))
        self.ended = False
        self._client: WebRTCClient | WebSocketClient | None = None
        self._dropped = asyncio.Event()
        self._drop_reason = ""
        self._last_frame_at = time.monotonic()
        self._supervisor: asyncio.Task[None] | None = None
        self._http: aiohttp.ClientSession | None = None
        self._watchers: set[asyncio.Task[None]] = set()
        self.refusal: str | None = None  # why a resume was refused, when one was

    @property
    def client(self) -> WebRTCClient | WebSocketClient | None:
        """The connection carrying the session now."""
        return self._client

    async def start(self) -> None:
        """Open the first connection and watch it; later connections open by themselves."""
        self._http = aiohttp.ClientSession()
        await self._open(resume=False)
        self._supervisor = asyncio.create_task(self._supervise(), name="resuming-session")

    async def send(self, message: dict[str, Any]) -> None:
        """Send a control message on the current connection (remembering pause, which a resume keeps)."""
        if message.get("type") == "generation_paused_updated":
            self.paused = bool(message.get("paused"))
        assert self._client is not None
        await self._client.send(message)

    # -- connections -------------------------------------------------------------------------

    def _init_message(self, *, resume: bool) -> dict[str, Any]:
        init = {"type": "session_init_v2", **self._init}
        if resume:
            assert self.session_id is not None and self.resume_token is not None
            init["resume_session"] = {"session_id": self.session_id, "resume_token": self.resume_token}
        return init

    async def _open(self, *, resume: bool) -> None:
        self._dropped.clear()
        self._last_frame_at = time.monotonic()
        init = self._init_message(resume=resume)
        client: WebRTCClient | WebSocketClient
        if self.transport == "webrtc":
            client = WebRTCClient(
                self._base_url,
                session_init=init,
                on_frame=self._frame,
                keep_frames=False,
                auth_token=self._auth_token,
            )
            client.on_event = self._event
            client.pc.on("connectionstatechange", lambda c=client: self._peer_state(c))
        else:
            client = WebSocketClient(self._base_url, session_init=init, auth_token=self._auth_token)
            client.on_event = self._event
            client.segments = self.segments  # one list across connections
        self._client = client
        try:
            if isinstance(client, WebSocketClient):
                await client.connect(send_init=False)
                await client.send(init)
                watcher = asyncio.create_task(self._watch_ws(client), name="resuming-ws-watch")
                self._watchers.add(watcher)
                watcher.add_done_callback(self._watchers.discard)
            else:
                await client.connect(http=self._http)
        except BaseException:
            await client.close()
            raise

    async def _watch_ws(self, client: WebSocketClient) -> None:
        await client.closed.wait()
        if client is self._client and client.close_code != NORMAL_CLOSE and not self.ended:
            self._drop(f"WebSocket closed with {client.close_code}")

    def _peer_state(self, client: WebRTCClient) -> None:
        if client is self._client and client.pc.connectionState in ("failed", "closed") and not self.ended:
            self._drop(f"peer connection {client.pc.connectionState}")

    def _frame(self, frame: ReceivedFrame) -> None:
        self._last_frame_at = frame.received_at
        self.frames.append(frame)
        if self._on_frame is not None:
            self._on_frame(frame)

    def _event(self, event: dict[str, Any]) -> None:
        kind = event.get("type")
        if kind == "session_info":
            self.session_id = event["session_id"]
            self.resume_token = event["resume_token"]
        elif kind == "ltx2_stream_complete":
            if self._dropped.is_set():
                # The goodbye of a connection being left (a draining server sends it after its
                # retryable error): the session goes on elsewhere, and its one event log never ends here.
                return
            self.ended = True
        elif kind == "error" and event.get("code") == "invalid_message" and "resume_session" in str(event.get("message")):
            self.refusal = str(event.get("message"))  # a spent or unknown token: trying again cannot help
            self.ended = True
        elif kind == "error" and event.get("retryable") and event.get("code") in RETRYABLE_DROPS:
            self._drop(f"error {event.get('code')}: {event.get('message')}")
        self.record_event(event)

    def _drop(self, reason: str) -> None:
        if not self._dropped.is_set():
            self._drop_reason = reason
            self._dropped.set()

    # -- supervision -------------------------------------------------------------------------

    async def _supervise(self) -> None:
        while not self.ended:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._dropped.wait(), 0.1)
            if self.ended:
                return
            if not self._dropped.is_set() and self.transport == "webrtc" and await self._stalled():
                self._drop("frames stopped and the session's replica does not answer")
            if self._dropped.is_set():
                await self._resume()

    async def _stalled(self) -> bool:
        """Over WebRTC a dead replica sends nothing: no frame for a while, and no answer about the session."""
        quiet_for = time.monotonic() - self._last_frame_at
        if quiet_for < (PAUSED_PROBE_S if self.paused else FLOWING_STALL_S) or self.session_id is None:
            return False
        alive = await self._replica_answers()
        if alive:
            self._last_frame_at = time.monotonic()  # alive but slow (or paused): look again later
        return not alive

    async def _replica_answers(self) -> bool:
        assert self._http is not None
        url = f"{self._base_url}/v1/sessions/{self.session_id}/frames"
        try:
            async with self._http.get(url, timeout=aiohttp.ClientTimeout(total=PROBE_TIMEOUT_S)) as response:
                return response.status == 200
        except (aiohttp.ClientError, TimeoutError):
            return False

    async def _resume(self) -> None:
        noticed, reason = time.monotonic(), self._drop_reason
        logger.info("session %s dropped (%s): resuming", (self.session_id or "?")[:8], reason)
        old = self._client
        if old is not None:
            await old.close()
        if self.session_id is None or self.resume_token is None:
            raise ResumeRefused(f"dropped before session_info arrived ({reason}): nothing to resume")
        last_error: Exception | None = None
        for delay in RETRY_DELAYS_S:
            await asyncio.sleep(delay)
            try:
                await self._open(resume=True)
            except OfferRejected as exc:
                if exc.status < 500:  # refused (a bad token, auth): trying again cannot help
                    self.refusal = str(exc)
                    self.ended = True
                    raise ResumeRefused(f"session {self.session_id} was not taken back: {exc}") from exc
                last_error = exc
                continue
            except (aiohttp.ClientError, OSError) as exc:
                last_error = exc
                continue
            self.reconnects.append(Reconnect(noticed_at=noticed, reason=reason, resumed_at=time.monotonic()))
            return
        self.ended = True
        raise ResumeRefused(f"no replica took session {self.session_id} back: {last_error}")

    async def close(self) -> None:
        """Stop watching and close the current connection."""
        self.ended = True
        if self._supervisor is not None:
            self._supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError, ResumeRefused):
                await self._supervisor
        if self._client is not None:
            await self._client.close()
        for watcher in list(self._watchers):
            watcher.cancel()
        if self._http is not None:
            await self._http.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
