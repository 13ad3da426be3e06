"""A session's recording, as it was written (fragmented MP4), stream-copied into a plain MP4.

No re-encode: every kept packet is copied as it is; only its timing changes. The recording's
fragments carry the session's timeline (``tfdt``), which may start late (recording began mid-session)
and has holes where a segment was cut short or taken back: the kept video is laid end to end from 0,
frame after frame, and each audio packet moves with the video run it belongs to. Audio before the
first kept frame, or in a hole, is left out, as is audio that would overlap the packet before it
(the AAC packets straddling a cut), so both tracks stay monotonic. Segments taken back are named by
the byte ranges of the source file they occupy (``dropped``); their packets are left out too.

The output is an ordinary MP4 with its index at the front (``movflags=+faststart``), so a player can
start before the whole file has arrived. Sync code (file I/O, PyAV): run it in a thread. Every PyAV
failure surfaces as :class:`RemuxError`.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Final

import av
from av.container import InputContainer
from av.packet import Packet
from av.stream import Stream

__all__ = ["EmptyRecording", "RemuxError", "RemuxResult", "remux_recording"]

_FORMAT: Final = "mp4"
_OPTIONS: Final = {"movflags": "+faststart"}  # moov before mdat: playable while it downloads


class RemuxError(RuntimeError):
    """The recording could not be read or the MP4 could not be written."""


class EmptyRecording(RemuxError):
    """The recording holds no video frame to keep."""


@dataclass(frozen=True)
class RemuxResult:
    """What the finished MP4 holds."""

    frames: int  # video frames
    duration_s: float  # of the video: frames laid end to end
    audio: bool  # whether it has a sound track


@dataclass(frozen=True)
class _Run:
    """Video frames that follow each other without a hole, on the source's timeline and the output's (s)."""

    start: Fraction
    end: Fraction
    shift: Fraction  # source time - output time


def remux_recording(source: Path, target: Path, *, dropped: Sequence[tuple[int, int]] = ()) -> RemuxResult:
    """Copy the packets of ``source`` (fragmented MP4, H.264 and optional AAC) into ``target``.

    ``dropped``: ``[start, end)`` byte ranges of ``source`` whose packets are left out. EmptyRecording
    when no video frame is left; RemuxError when the source cannot be read or the output not written.
    """
    try:
        runs, frames, duration = _video_runs(source, dropped)
        if frames == 0:
            raise EmptyRecording(f"{source.name}: no video frame to keep")
        audio = _copy(source, target, runs, dropped)
    except av.FFmpegError as exc:
        raise RemuxError(f"remuxing {source.name} failed: {exc}") from exc
    return RemuxResult(frames=frames, duration_s=float(duration), audio=audio)


def _streams(container: InputContainer) -> tuple[Stream, Stream | None]:
    video = next((s for s in container.streams if s.type == "video"), None)
    if video is None:
        raise RemuxError("the recording has no video track")
    audio = next((s for s in container.streams if s.type == "audio"), None)
    return video, audio


def _kept(packet: Packet, dropped: Sequence[tuple[int, int]]) -> bool:
    if packet.dts is None or packet.size == 0:
        return False  # the demuxer's flush packets
    pos = packet.pos
    return pos is None or pos < 0 or not any(start <= pos < end for start, end in dropped)


def _times(packet: Packet) -> tuple[Fraction, Fraction]:
    """(dts, duration) of a packet in seconds."""
    time_base = packet.time_base
    assert packet.dts is not None and time_base is not None
    return packet.dts * time_base, (packet.duration or 0) * time_base


def _video_runs(source: Path, dropped: Sequence[tuple[int, int]]) -> tuple[list[_Run], int, Fraction]:
    """First pass: the kept video as runs without holes; the frames kept and their duration (s)."""
    runs: list[_Run] = []
    frames = 0
    laid = Fraction(0)  # output time of the next frame
    with av.open(str(source)) as container:
        video, _ = _streams(container)
        for packet in container.demux(video):
            if not _kept(packet, dropped):
                continue
            dts, duration = _times(packet)
            if runs and runs[-1].end == dts:
                last = runs[-1]
                runs[-1] = _Run(last.start, dts + duration, last.shift)
            else:
                runs.append(_Run(dts, dts + duration, dts - laid))
            frames += 1
            laid += duration
    return runs, frames, laid


def _output_time(runs: list[_Run], starts: list[Fraction], time: Fraction, *, video: bool) -> Fraction | None:
    """Where source ``time`` goes in the output; None for audio outside every run."""
    index = bisect.bisect_right(starts, time) - 1
    if index < 0:
        return None
    run = runs[index]
    if not video and time >= run.end:
        return None
    return time - run.shift


def _copy(source: Path, target: Path, runs: list[_Run], dropped: Sequence[tuple[int, int]]) -> bool:
    """Second pass: every kept packet, retimed, into ``target``; True when it has a sound track."""
    with av.open(str(source)) as container:
        video, audio = _streams(container)
        with av.open(str(target), mode="w", format=_FORMAT, options=_OPTIONS) as output:
            out_video = output.add_stream_from_template(video)
            out_audio = output.add_stream_from_template(audio) if audio is not None else None
            audio_end = Fraction(0)  # output time where the last kept audio packet ends
            wrote_audio = False
            starts = [run.start for run in runs]
            for packet in _demux(container, video, audio):
                if not _kept(packet, dropped):
                    continue
                is_video = packet.stream is video
                dts, duration = _times(packet)
                new = _output_time(runs, starts, dts, video=is_video)
                if new is None:
                    continue
                if not is_video:
                    if new < audio_end:
                        continue  # straddles a cut: it would overlap the packet before it
                    audio_end = new + duration
                    wrote_audio = True
                _retime(packet, new)
                packet.stream = out_video if is_video else out_audio
                output.mux(packet)
    return wrote_audio and out_audio is not None


def _demux(container: InputContainer, video: Stream, audio: Stream | None) -> Iterator[Packet]:
    streams = [video] if audio is None else [video, audio]
    yield from container.demux(streams)


def _retime(packet: Packet, output_time: Fraction) -> None:
    """Move ``packet`` to ``output_time`` (s), in its own time base; pts follows dts (no B-frames)."""
    time_base = packet.time_base
    assert time_base is not None and packet.dts is not None
    offset = (packet.pts - packet.dts) if packet.pts is not None else 0
    dts = round(output_time / time_base)
    packet.dts = dts
    packet.pts = dts + offset
