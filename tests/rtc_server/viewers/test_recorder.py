"""A recording fed a session's media through its WatchHub, without sockets: files, segments taken back,
stopping at a segment's end, numbering, recovery of a previous run's recording, retention."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from gpu.audio import AudioFormat
from rtc_server.media.fmp4 import Fmp4Encoder
from rtc_server.protocol import MediaInit, MediaSegmentComplete, serialize
from rtc_server.resume_record import hash_resume_token
from rtc_server.viewers.fmp4_fanout import WatchHub
from rtc_server.viewers.recording import RecordingService
from rtc_server.viewers.recording_files import RecordingDir
from rtc_server.viewers.watch_tokens import WatchToken
from tests.conftest import make_config

FPS = 24
SIZE = 64
AUDIO = AudioFormat(sample_rate=48000, channels=1)
SESSION = "0123456789abcdef0123456789abcdef"
TOKEN_HASH = hash_resume_token("the-owners-resume-token")


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def segment_items(encoder: Fmp4Encoder, idx: int, *, frames: int = FPS) -> list[str | bytes]:
    """A segment's media as the hub passes it on: media_init, init, fragments, media_segment_complete."""
    pixels = np.full((frames, SIZE, SIZE, 3), idx * 40 % 255, np.uint8)
    with encoder.encode_stream(iter([pixels]), num_frames=frames) as stream:
        chunks: list[str | bytes] = list(stream)
        init = MediaInit(segment_idx=idx, mime=stream.mime, stream_id="s")
        complete = MediaSegmentComplete(
            segment_idx=idx, stream_id="s", chunks=stream.media_chunks, duration_ms=stream.duration_ms,
            pts_base_ms=stream.pts_base_ms,
        )  # fmt: skip
    return [serialize(init), *chunks, serialize(complete)]


def feed(hub: WatchHub, idx: int, items: list[str | bytes]) -> None:
    for item in items:
        hub.media(idx, item)


@pytest.fixture
async def service(tmp_path: Path) -> AsyncIterator[RecordingService]:
    config = make_config(
        streaming={"recording_dir": str(tmp_path / "rec"), "recording_retention_seconds": 3600},
        default_request={"sampling": {"width": SIZE, "height": SIZE, "fps": FPS, "num_frames": FPS}},
    )
    recordings = RecordingService(config=config, audio_format=lambda: AUDIO, clock=Clock())
    await recordings.start()
    yield recordings
    await recordings.close()


def new_hub() -> WatchHub:
    return WatchHub(token=WatchToken(), max_viewers=1, max_queued_bytes=1 << 20, label="test hub")


def owner() -> tuple[str, str | None]:
    return SESSION, TOKEN_HASH


def sidecar(tmp_path: Path, number: int) -> dict[str, Any]:
    return json.loads((tmp_path / "rec" / f"{SESSION}-{number}.json").read_text())


async def test_a_recording_starts_at_the_next_segment_and_ends_after_the_one_in_flight(
    service: RecordingService, tmp_path: Path
) -> None:
    encoder = Fmp4Encoder(width=SIZE, height=SIZE, fps=FPS, audio_format=AUDIO)
    hub = new_hub()
    first = segment_items(encoder, 0)
    feed(hub, 0, first[:3])  # media before the recording began
    recorder = service.record(hub, owner=owner, label="rec")
    feed(hub, 0, first[3:])  # the rest of a segment it did not see begin: left out
    for idx in (1, 2):
        feed(hub, idx, segment_items(encoder, idx))
    third = segment_items(encoder, 3)
    feed(hub, 3, third[:4])
    recorder.stop(now=False)  # mid-segment: this one goes in whole
    assert not recorder.stopped
    feed(hub, 3, third[4:])
    assert recorder.stopped
    feed(hub, 4, segment_items(encoder, 4))  # after the end: nothing of it
    meta = await recorder.finish()
    assert meta is not None and meta.state == "ready"
    assert (meta.frames, meta.duration_s, meta.audio) == (3 * FPS, 3.0, True)
    assert sorted(p.name for p in (tmp_path / "rec").iterdir()) == [f"{SESSION}-1.json", f"{SESSION}-1.mp4"]
    side = sidecar(tmp_path, 1)
    assert side["token_sha256"] == TOKEN_HASH and side["state"] == "ready" and side["frames"] == 72
    assert side["bytes"] == (tmp_path / "rec" / f"{SESSION}-1.mp4").stat().st_size


async def test_a_segment_taken_back_after_its_media_began_is_left_out(service: RecordingService) -> None:
    encoder = Fmp4Encoder(width=SIZE, height=SIZE, fps=FPS, audio_format=AUDIO)
    hub = new_hub()
    recorder = service.record(hub, owner=owner, label="rec")
    feed(hub, 0, segment_items(encoder, 0))
    feed(hub, 1, segment_items(encoder, 1))
    hub.retracted(1)  # a newer prompt replaced it before its owner showed it: it is made again
    assert recorder.frames == FPS
    again = segment_items(encoder, 1)
    feed(hub, 1, again[:3])
    hub.retracted(1)  # taken back mid-encoding too
    feed(hub, 1, again[3:])
    feed(hub, 1, segment_items(encoder, 1, frames=10))  # and a third version, cut short
    recorder.stop(now=True)
    meta = await recorder.finish()
    assert meta is not None and (meta.frames, meta.duration_s) == (FPS + 10, round(34 / FPS, 3))


async def test_each_recording_of_a_session_gets_the_next_number_and_an_empty_one_leaves_nothing(
    service: RecordingService, tmp_path: Path
) -> None:
    encoder = Fmp4Encoder(width=SIZE, height=SIZE, fps=FPS, audio_format=AUDIO)
    hub = new_hub()
    empty = service.record(hub, owner=owner, label="empty")
    empty.stop(now=True)
    assert await empty.finish() is None
    for expected in (1, 2):
        recorder = service.record(hub, owner=owner, label="rec")
        feed(hub, expected, segment_items(encoder, expected))
        recorder.stop(now=False)
        meta = await recorder.finish()
        assert meta is not None and meta.number == expected and meta.frames == FPS
    assert sorted(p.name for p in (tmp_path / "rec").iterdir() if p.suffix == ".mp4") == [
        f"{SESSION}-1.mp4", f"{SESSION}-2.mp4",
    ]  # fmt: skip


async def test_a_recording_left_unfinished_by_an_earlier_run_is_finalised_at_start(tmp_path: Path) -> None:
    files = RecordingDir(tmp_path / "rec")
    files.create()
    meta, part = files.open_new(session_id=SESSION, token_sha256=TOKEN_HASH, started_at=1.0)
    encoder = Fmp4Encoder(width=SIZE, height=SIZE, fps=FPS)
    with part:
        for idx in range(2):
            chunks = segment_items(encoder, idx)[1:-1]
            part.write(b"".join(c for c in chunks if isinstance(c, bytes) and (idx == 0 or c[4:8] != b"ftyp")))
    config = make_config(streaming={"recording_dir": str(tmp_path / "rec")})
    recordings = RecordingService(config=config, audio_format=lambda: None)
    await recordings.start()
    try:
        for _ in range(200):
            if sidecar(tmp_path, 1)["state"] != "recording":
                break
            await asyncio.sleep(0.02)
    finally:
        await recordings.close()
    side = sidecar(tmp_path, 1)
    assert (side["state"], side["frames"], side["audio"]) == ("ready", 48, False)
    assert not files.part_path(meta).exists()


async def test_recordings_past_their_retention_are_deleted_and_running_ones_are_kept(
    service: RecordingService, tmp_path: Path
) -> None:
    clock = service._clock  # the test's own clock
    assert isinstance(clock, Clock)
    encoder = Fmp4Encoder(width=SIZE, height=SIZE, fps=FPS, audio_format=AUDIO)
    hub = new_hub()
    done = service.record(hub, owner=owner, label="done")
    feed(hub, 0, segment_items(encoder, 0))
    done.stop(now=True)
    assert await done.finish() is not None
    running = service.record(hub, owner=owner, label="running")
    feed(hub, 1, segment_items(encoder, 1))
    for _ in range(100):  # its file opens in a thread
        if running.meta is not None:
            break
        await asyncio.sleep(0.01)
    stray = tmp_path / "rec" / f"{SESSION}-9.part.mp4"
    stray.write_bytes(b"left by a crash")
    os.utime(stray, (clock.now - 1800, clock.now - 1800))  # younger than the retention, for now
    assert await service.sweep() == 0, "nothing is old enough yet"
    clock.now += 3601
    assert await service.sweep() == 2
    names = sorted(p.name for p in (tmp_path / "rec").iterdir())
    assert names == [f"{SESSION}-2.json", f"{SESSION}-2.part.mp4"], "only the running recording is left"
    running.stop(now=True)
    meta = await running.finish()
    assert meta is not None and meta.number == 2
