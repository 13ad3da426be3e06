"""One session's resumability: its resume token, its record in the store, and taking one over.

A session's record (``rtc_server.resume_record``) is written when the session starts, after each
segment's state is stored (``sync``: awaited, one round trip, before the segment is reported
complete, so a client never sees a segment done that the record does not count), when the client
changes a toggle, its curated list or sends a prompt (``touch``: in the background), and once more
when the server shuts down. One task writes it, always the newest view, one write at a time. A
session that ends here for good deletes its record; one that moves on (shutdown, taken over) leaves
it for the next owner.

Resuming (``session_init_v2.resume_session``): the record is looked up, the token checked in constant
time, the stored continuation state loaded and checked against the generator, then the record is
claimed with a compare-and-swap on its owner (so a token works once, and of two connections racing
with it one wins) under a new token. The session keeps its id. Every refusal is a ResumeRefused
naming ``resume_session`` and the part that failed; nothing of the session asked for is touched.
A resumed session whose new connection ends before ``session_info`` carried the new token gives
the record back to the old token (and keeps the state): a reconnection that failed must not
strand the session.

With ``streaming.viewers.enabled`` the session also has a watch hub (``viewers``) and ``session_info``
carries its ``watch_token``: a new one for each connection of the session (a resumed session's old
watch links end with the server or connection they watched). Only its hash is kept. The viewers end
when the session ends here.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from gpu.generator import ContinuationState, IncompatibleStateError
from rtc_server.generation_policy import GenerationPolicy, PolicyState
from rtc_server.protocol import ResumeSession, SessionInfo, SessionInitV2
from rtc_server.resume_record import (
    CorruptRecordError,
    ResumeRecord,
    hash_resume_token,
    new_resume_token,
    token_matches,
)
from rtc_server.session import Session, SessionState
from rtc_server.session_events import SessionEvents
from rtc_server.session_services import SessionDirectory, SessionServices
from rtc_server.session_start import ResumeRefused, StartPoint, describe_init
from rtc_server.store.base import InvalidStateError, StoreError
from rtc_server.store.resume_records import StoredRecord
from rtc_server.tasks import cancel_and_wait
from rtc_server.viewers.fmp4_fanout import WatchHub
from rtc_server.viewers.watch_tokens import WatchToken

__all__ = ["SHUTDOWN_MESSAGE", "SUSPEND_WAIT_S", "RecordView", "Resumed", "SessionContinuity"]

logger = logging.getLogger(__name__)

# What the record says about the stream, read when it is written: the index the stored state
# continues to, and the policy's state at that boundary with the client's latest choices.
RecordView = Callable[[], tuple[int, PolicyState]]
SUSPEND_WAIT_S = 2.0  # at shutdown, how long a segment the client is watching may take to finish
SHUTDOWN_MESSAGE = "this server is shutting down; resume elsewhere"
CLAIM_ATTEMPTS = 3  # a record its old server is still writing is read again this many times in all


@dataclass(frozen=True)
class Resumed:
    """A record taken over: where the stream goes on, and the state it continues from."""

    record: ResumeRecord
    state: ContinuationState | None

    @property
    def start(self) -> StartPoint:
        """Where the stream goes on. The stored state's own ``segment_idx`` (every backend's states
        carry the index of the segment they continue to) wins over the record's: the two are written
        one after the other, and a server killed between the writes leaves the state ahead."""
        idx = self.state.payload.get("segment_idx") if self.state is not None else None
        if not isinstance(idx, int) or isinstance(idx, bool) or idx < 0:
            idx = self.record.next_segment_idx
        return StartPoint(self.state, idx)

    def applied_to(self, init: SessionInitV2) -> SessionInitV2:
        """The resuming init with the options the session started with (the stream mode stays the transport's)."""
        record = self.record
        return init.model_copy(
            update={"preset": record.preset, "preset_label": record.preset_label, "client_id": record.client_id}
        )


class SessionContinuity:
    """The resume token and record of one session (see the module docstring)."""

    def __init__(
        self,
        *,
        session: Session,
        services: SessionServices,
        on_lost: Callable[[], object],
        directory: SessionDirectory | None = None,
    ) -> None:
        """``on_lost`` is called when the record turns out to be owned by another token: the session
        was resumed elsewhere, and this copy must stop without touching its state. ``directory``
        (the server's live sessions) renames a resumed session and ends an older copy of it here."""
        self._session = session
        self._records = services.records
        self._store = services.store
        self._pool = services.pool
        self._directory = directory
        self._on_lost = on_lost
        self._token: str | None = None  # the plain token, only until session_info has carried it
        self._token_hash: str | None = None
        self._previous_hash: str | None = None  # the token a resumed session was claimed from
        self._init: SessionInitV2 | None = None
        self._view: RecordView | None = None
        self._dirty = asyncio.Event()
        self._wanted = 0  # views asked for (touches)
        self._written = 0  # views written (or given up on after a store failure)
        self._progress = asyncio.Event()  # set after each write
        self._writer: asyncio.Task[None] | None = None
        self._lost = False
        settings = services.streaming.viewers
        self._watchable = settings.enabled
        # The session's viewers (None when they are off); its token is issued when the session starts.
        # A recorded session has one too: its recording takes the media viewers would get.
        self.viewers: WatchHub | None = None
        if settings.enabled or services.streaming.recording_dir is not None:
            self.viewers = WatchHub(
                token=WatchToken(),
                max_viewers=settings.max_per_session,
                max_queued_bytes=settings.max_queued_bytes,
                label=f"session {session.short_id} viewers",
            )

    # -- taking a record over -------------------------------------------------------------------

    async def resume(
        self, init: SessionInitV2, *, policy: GenerationPolicy, events: SessionEvents
    ) -> tuple[StartPoint | None, SessionInitV2]:
        """Take over the session ``init.resume_session`` names: the session takes its id, ``policy``
        its state; returns where the stream goes on and the init with the session's own options.
        When it cannot be resumed: ResumeRefused, or with ``continuation_fallback: fresh`` the client
        is told and a fresh stream starts (None, as for an init that resumes nothing)."""
        if init.resume_session is None:
            return None, init
        try:
            resumed = await self.claim(init.resume_session)
        except ResumeRefused as exc:
            if init.continuation_fallback != "fresh":
                raise
            events.error("invalid_message", f"{exc}; starting a fresh stream as asked")
            events.log("init", transport=self._session.transport, **describe_init(init))
            return None, init
        session_id = resumed.record.session_id
        if self._directory is not None:
            self._directory.rename(self._session.id, session_id)
        else:
            self._session.id = session_id
        policy.restore(resumed.record.policy)
        init = resumed.applied_to(init)
        start = resumed.start
        events.log("init", transport=self._session.transport, resumed_at=start.segment_idx, **describe_init(init))
        logger.info("session %s: resumed at segment %d", self._session.short_id, start.segment_idx)
        return start, init

    async def claim(self, request: ResumeSession) -> Resumed:
        """Take over the record of the session ``request`` names (a live older copy of it on this
        server is ended first); ResumeRefused when it cannot be resumed."""
        session_id = request.session_id
        stored = await self._verified(request)
        if self._directory is not None and await self._directory.hand_over(session_id):
            stored = await self._verified(request)  # the old connection may have moved it on
        token = new_resume_token()
        token_hash = hash_resume_token(token)
        for _ in range(CLAIM_ATTEMPTS):
            record = self._read(stored)
            state = await self._load_state(session_id, record)
            if await self._records.claim(session_id, expected=stored, token_hash=token_hash, data=record.to_json()):
                self._token, self._token_hash, self._previous_hash = token, token_hash, stored.token_hash
                return Resumed(record, state)
            # Changed since it was read: resumed by another connection (the token no longer matches),
            # or written once more by its old server (read it again).
            stored = await self._verified(request)
        raise ResumeRefused("resume_session.session_id: the session kept changing; try again")

    async def _verified(self, request: ResumeSession) -> StoredRecord:
        stored = await self._records.get(request.session_id)
        if stored is None:
            raise ResumeRefused("resume_session.session_id: no resumable session with this id (unknown, ended or expired)")
        if not token_matches(request.resume_token, stored.token_hash):
            raise ResumeRefused("resume_session.resume_token does not match the session (a token resumes it once)")
        return stored

    @staticmethod
    def _read(stored: StoredRecord) -> ResumeRecord:
        try:
            return ResumeRecord.from_json(stored.data, token_hash=stored.token_hash)
        except CorruptRecordError as exc:
            raise ResumeRefused(f"resume_session.session_id: its record cannot be read here ({exc})") from exc

    async def _load_state(self, session_id: str, record: ResumeRecord) -> ContinuationState | None:
        try:
            state = await self._store.load(session_id)
            if state is not None:
                await self._pool.check_state(state)
        except (InvalidStateError, IncompatibleStateError) as exc:
            raise ResumeRefused(f"resume_session.session_id: its stored state cannot be continued ({exc})") from exc
        if state is None and record.next_segment_idx > 0:
            raise ResumeRefused("resume_session.session_id: its stored state expired")
        return state

    # -- keeping the record -----------------------------------------------------------------------

    def start(self, init: SessionInitV2, view: RecordView) -> None:
        """The session starts (fresh, or resumed after ``claim``): issue its token and write its record."""
        self._init, self._view = init, view
        if self._token_hash is None:
            self._token = new_resume_token()
            self._token_hash = hash_resume_token(self._token)
        self._writer = asyncio.create_task(self._write_forever(), name=f"resume-record-{self._session.short_id}")
        self.touch()

    def session_info(self) -> SessionInfo | None:
        """The ``session_info`` message, once: the token is forgotten as it leaves."""
        token, self._token = self._token, None
        if token is None:
            return None
        watch_token = self.viewers.token.take() if self.viewers is not None and self._watchable else None
        return SessionInfo(session_id=self._session.id, resume_token=token, watch_token=watch_token)

    @property
    def token_hash(self) -> str | None:
        """SHA-256 (hex) of the session's resume token, once it has one (its owner's secret)."""
        return self._token_hash

    def touch(self) -> None:
        """The view changed: write the record again soon."""
        self._wanted += 1
        self._dirty.set()

    async def sync(self) -> None:
        """The view changed: return once the record says so (a store failure is logged, not raised)."""
        self.touch()
        target = self._wanted
        while self._written < target and self._writer is not None and not self._writer.done():
            self._progress.clear()
            await self._progress.wait()

    async def final_write(self) -> None:
        """Write the newest view now and stop writing (the session moves to another server)."""
        await self._stop_writer()
        await self._write()

    @property
    def unsent_resume(self) -> bool:
        """A resumed session whose client has not been sent its new token yet."""
        return self._previous_hash is not None and self._token is not None

    async def close(self, *, delete: bool) -> None:
        """Stop writing; ``delete`` drops the record (the session ended for good, nothing may resume it).
        A resumed session whose new token never left gives the record back to the old one instead."""
        await self._stop_writer()
        if self.viewers is not None:
            self.viewers.close("error" if self._session.state is SessionState.ERROR else "stop_requested")
        # The view and on_lost reach back into the session's controller: let go, so it needs no GC pass.
        self._view, self._on_lost = None, _nothing
        if self._token_hash is None or self._lost:
            return
        try:
            if self.unsent_resume:
                await self._give_back()
            elif delete:
                await self._records.delete(self._session.id, self._token_hash)
        except StoreError:
            logger.exception("session %s: closing its resume record failed", self._session.short_id)

    async def _give_back(self) -> None:
        stored = await self._records.get(self._session.id)
        if stored is not None and stored.token_hash == self._token_hash and self._previous_hash is not None:
            await self._records.claim(
                self._session.id, expected=stored, token_hash=self._previous_hash, data=stored.data
            )
            logger.info("session %s: its new connection ended early; the old token resumes it", self._session.short_id)

    async def _stop_writer(self) -> None:
        writer, self._writer = self._writer, None
        if writer is not None and writer is not asyncio.current_task():
            await cancel_and_wait(writer)

    async def _write_forever(self) -> None:
        try:
            while not self._lost:
                await self._dirty.wait()
                self._dirty.clear()
                target = self._wanted
                await self._write()
                self._written = target
                self._progress.set()
        finally:
            self._progress.set()  # nobody waits for a writer that is gone

    async def _write(self) -> None:
        record = self._record()
        if record is None or self._lost:
            return
        try:
            owned = await self._records.put(record.session_id, record.token_hash, record.to_json())
        except StoreError as exc:
            # The next change writes it again; the stream itself does not depend on it.
            logger.warning("session %s: writing its resume record failed: %s", self._session.short_id, exc)
            return
        if not owned:
            self._lost = True
            logger.warning("session %s: resumed on another connection; this one stops", self._session.short_id)
            self._on_lost()

    def _record(self) -> ResumeRecord | None:
        if self._view is None or self._init is None or self._token_hash is None:
            return None
        next_idx, policy = self._view()
        init = self._init
        return ResumeRecord(
            session_id=self._session.id,
            token_hash=self._token_hash,
            next_segment_idx=next_idx,
            policy=policy,
            preset=init.preset,
            preset_label=init.preset_label,
            client_id=init.client_id,
            written_at=time.time(),
        )


def _nothing() -> None:
    pass
