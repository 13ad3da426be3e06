"""The fMP4 encoder with sound: an AAC track next to H.264, checked with the real ffprobe/ffmpeg."""

from __future__ import annotations

import gc
import itertools
import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from gpu.audio import AudioFormat, frame_sample_offset
from gpu.synthetic_audio import CLICK_AMPLITUDE, click_frames, render_tone
from rtc_server.media.aac import AAC_FRAME_SAMPLES, ENCODER_DELAY_SAMPLES, lead_frames
from rtc_server.media.fmp4 import Fmp4Encoder, Fmp4Segment

pytestmark = pytest.mark.skipif(
    shutil.which("ffprobe") is None or shutil.which("ffmpeg") is None,
    reason="needs ffprobe and ffmpeg (Debian package ffmpeg)",
)

WIDTH, HEIGHT, FPS = 64, 64, 24
RATE = 48_000
MONO = AudioFormat(sample_rate=RATE, channels=1)
TIMEOUT_S = 30
ONSET_LEVEL = 0.5  # the synthetic tone stays at 0.15, a click starts at 0.9


def frames_of(num_frames: int, start: int = 0) -> np.ndarray:
    rng = np.random.default_rng(start)
    return rng.integers(0, 256, size=(num_frames, HEIGHT, WIDTH, 3), dtype=np.uint8)


class Tone:
    """The synthetic backend's sound, segment after segment (phase carried like its state does)."""

    def __init__(self, audio_format: AudioFormat = MONO) -> None:
        self.audio_format = audio_format
        self.phase = 0.0

    def segment(self, first_frame_number: int, num_frames: int) -> np.ndarray:
        render = render_tone(
            prompt="a tone", seed=7, phase=self.phase, first_frame_number=first_frame_number,
            num_frames=num_frames, fps=FPS, audio_format=self.audio_format,
        )
        self.phase = render.next_phase
        return render.pcm


def data_of(segment: Fmp4Segment) -> bytes:
    return segment.init + b"".join(segment.fragments)


def probe(path: Path) -> dict[str, Any]:
    result = subprocess.run(
        ["ffprobe", "-v", "error", "-of", "json", "-show_streams", "-show_packets",
         "-show_entries", "packet=stream_index,pts,duration:stream=index,codec_name,profile,time_base,sample_rate",
         str(path)],
        capture_output=True, text=True, check=True, timeout=TIMEOUT_S,
    )
    return json.loads(result.stdout)


def packet_spans(info: dict[str, Any], codec: str) -> list[tuple[float, float]]:
    """(start, end) in seconds of each packet of the stream with ``codec``, in order."""
    (stream,) = [s for s in info["streams"] if s["codec_name"] == codec]
    num, den = (int(part) for part in stream["time_base"].split("/"))
    return [
        (int(p["pts"]) * num / den, (int(p["pts"]) + int(p["duration"])) * num / den)
        for p in info["packets"] if p["stream_index"] == stream["index"]
    ]


def assert_continuous(spans: list[tuple[float, float]], what: str) -> None:
    for (_, end), (start, _) in itertools.pairwise(spans):
        assert start == pytest.approx(end, abs=1e-9), f"{what}: gap or overlap at {end:.6f} s"


def decoded_audio(path: Path) -> np.ndarray:
    raw = subprocess.run(
        ["ffmpeg", "-v", "error", "-i", str(path), "-map", "0:a:0", "-f", "f32le", "-ac", "1", "-"],
        capture_output=True, check=True, timeout=TIMEOUT_S,
    ).stdout
    return np.frombuffer(raw, np.float32)


def clicks_of(first_frame_number: int, num_frames: int, rate: int = RATE) -> list[int]:
    """Stream samples where the synthetic sound of these frames has a click (segment start, each second)."""
    return [frame_sample_offset(first_frame_number + i, FPS, rate) for i in click_frames(first_frame_number, num_frames, FPS)]


def click_onsets(pcm: np.ndarray, rate: int = RATE) -> list[int]:
    """Samples where |x| first crosses the onset level after at least 10 ms below it."""
    loud = np.flatnonzero(np.abs(pcm) > ONSET_LEVEL)
    quiet = rate // 100
    return [int(at) for i, at in enumerate(loud) if i == 0 or at - loud[i - 1] > quiet]


def test_each_segment_has_one_h264_and_one_aac_track_of_matching_duration(tmp_path: Path) -> None:
    encoder = Fmp4Encoder(width=WIDTH, height=HEIGHT, fps=FPS, audio_format=MONO)
    assert encoder.mime == f'video/mp4; codecs="{encoder.codec_string}, mp4a.40.2"'
    tone, num_frames = Tone(), 24
    lead = lead_frames(FPS, RATE)
    for k in range(3):
        first = lead + k * num_frames
        segment = encoder.encode_segment(frames_of(num_frames, first), tone.segment(first, num_frames))
        assert segment.mime == encoder.mime
        assert segment.pts_base_ms == pytest.approx(first * 1000 / FPS)
        path = tmp_path / f"seg{k}.mp4"
        path.write_bytes(data_of(segment))
        info = probe(path)
        assert sorted(s["codec_name"] for s in info["streams"]) == ["aac", "h264"]
        (aac,) = [s for s in info["streams"] if s["codec_name"] == "aac"]
        assert (aac["profile"], int(aac["sample_rate"])) == ("LC", RATE)
        video = sum(end - start for start, end in packet_spans(info, "h264"))
        audio = sum(end - start for start, end in packet_spans(info, "aac"))
        assert video == pytest.approx(num_frames / FPS)
        assert abs(audio - video) < 1 / FPS, f"segment {k}: audio {audio:.4f} s vs video {video:.4f} s"


def test_segments_appended_like_mse_play_gap_free_on_both_tracks_with_clicks_on_segment_starts(
    tmp_path: Path,
) -> None:
    encoder = Fmp4Encoder(width=WIDTH, height=HEIGHT, fps=FPS, audio_format=MONO)
    tone, num_frames, count = Tone(), 24, 4
    lead = lead_frames(FPS, RATE)
    segments = []
    for k in range(count):
        first = lead + k * num_frames
        segments.append(encoder.encode_segment(frames_of(num_frames, first), tone.segment(first, num_frames)))
    path = tmp_path / "all.mp4"
    path.write_bytes(b"".join(data_of(s) for s in segments))
    info = probe(path)
    video, audio = packet_spans(info, "h264"), packet_spans(info, "aac")
    assert_continuous(video, "video")
    assert_continuous(audio, "audio")
    assert video[0][0] == pytest.approx(lead / FPS)
    assert audio[0][0] == 0.0  # the lead is silence that absorbed the encoder's priming
    # The audio trails the video only by what the encoder still holds.
    assert 0 <= video[-1][1] - audio[-1][1] < (ENCODER_DELAY_SAMPLES + AAC_FRAME_SAMPLES) / RATE

    pcm = decoded_audio(path)
    # The lead is silent (but for the first click's pre-echo, within the AAC frame before it).
    assert np.abs(pcm[: frame_sample_offset(lead, FPS, RATE) - AAC_FRAME_SAMPLES]).max() < 0.01
    onsets = click_onsets(pcm)
    starts = [c for k in range(count) for c in clicks_of(lead + k * num_frames, num_frames)]
    heard = [s for s in starts if s < len(pcm)]
    assert len(onsets) == len(heard)
    for onset, start in zip(onsets, heard, strict=True):
        assert abs(onset - start) < RATE // FPS // 8, f"click at {onset}, segment starts at {start}"


def test_streamed_chunks_carry_both_tracks_in_each_fragment_with_continuous_tfdt(tmp_path: Path) -> None:
    encoder = Fmp4Encoder(width=WIDTH, height=HEIGHT, fps=FPS, audio_format=MONO)
    tone, num_frames, lead = Tone(), 12, lead_frames(FPS, RATE)
    chunks = []
    for k in range(3):
        first = lead + k * num_frames
        frames, pcm = frames_of(num_frames, first), tone.segment(first, num_frames)

        def per_frame(frames: np.ndarray = frames, pcm: np.ndarray = pcm) -> Iterator[object]:
            # As a generator hands them over: one frame at a time, with the audio it owns.
            for i in range(len(frames)):
                yield frames[i : i + 1], pcm[frame_sample_offset(i, FPS, RATE) : frame_sample_offset(i + 1, FPS, RATE)]

        with encoder.encode_stream(per_frame(), num_frames=num_frames) as stream:
            assert stream.mime == encoder.mime
            chunks.append(list(stream))
    audio_tfdt: list[int] = []
    for segment in chunks:
        tracks_per_fragment = [len(list(trafs(fragment))) for fragment in segment[1:]]
        assert len(tracks_per_fragment) == num_frames
        # 2000 samples a frame: once the encoder's delay is filled, every fragment has AAC in it.
        assert set(tracks_per_fragment[2:]) == {2}
        audio_tfdt += [tfdt for fragment in segment[1:] for track, tfdt in trafs(fragment) if track == 2]
    assert audio_tfdt == sorted(audio_tfdt) and audio_tfdt[0] == 0
    path = tmp_path / "streamed.mp4"
    path.write_bytes(b"".join(b"".join(segment) for segment in chunks))
    info = probe(path)
    assert_continuous(packet_spans(info, "h264"), "video")
    assert_continuous(packet_spans(info, "aac"), "audio")


def trafs(fragment: bytes) -> Iterator[tuple[int, int]]:
    """(track_ID, tfdt) of each traf in a moof+mdat fragment."""
    for box_type, moof in boxes(fragment):
        if box_type != b"moof":
            continue
        for child_type, traf in boxes(moof):
            if child_type != b"traf":
                continue
            fields = dict(boxes(traf))
            track_id = int.from_bytes(fields[b"tfhd"][4:8], "big")
            tfdt = fields[b"tfdt"]
            yield track_id, int.from_bytes(tfdt[4:12] if tfdt[0] == 1 else tfdt[4:8], "big")


def boxes(data: bytes) -> Iterator[tuple[bytes, bytes]]:
    offset = 0
    while offset + 8 <= len(data):
        size = int.from_bytes(data[offset : offset + 4], "big")
        yield data[offset + 4 : offset + 8], data[offset + 8 : offset + size]
        offset += size


def test_a_segment_that_ends_early_keeps_both_tracks_on_one_timeline(tmp_path: Path) -> None:
    encoder = Fmp4Encoder(width=WIDTH, height=HEIGHT, fps=FPS, audio_format=MONO)
    tone, num_frames, lead = Tone(), 24, lead_frames(FPS, RATE)
    first = encoder.encode_segment(frames_of(num_frames, lead), tone.segment(lead, num_frames))
    # The second segment's producer stops after 5 of its 24 frames (an abandoned segment).
    start = lead + num_frames
    pcm = tone.segment(start, num_frames)
    short_audio = pcm[: frame_sample_offset(5, FPS, RATE)]
    with encoder.encode_stream(iter([(frames_of(5, start), short_audio)]), num_frames=num_frames) as stream:
        short = list(stream)
    assert stream.num_frames == 5 and stream.reserved_frames == num_frames
    start = lead + 2 * num_frames
    third = encoder.encode_segment(frames_of(num_frames, start), tone.segment(start, num_frames))
    assert third.pts_base_ms == pytest.approx(start * 1000 / FPS)
    path = tmp_path / "all.mp4"
    path.write_bytes(data_of(first) + b"".join(short) + data_of(third))
    info = probe(path)
    # Video keeps the abandoned segment's place (a hole, as without sound); the audio fills it
    # with silence, so the third segment's click still lands on its first frame.
    assert_continuous(packet_spans(info, "aac"), "audio")
    pcm = decoded_audio(path)
    onsets = click_onsets(pcm)
    # The short segment's clicks up to its 5th frame, then the third segment's (those encoded yet).
    expected = clicks_of(lead, num_frames) + clicks_of(lead + num_frames, 5) + clicks_of(start, num_frames)
    expected = [at for at in expected if at < len(pcm)]
    assert len(onsets) == len(expected)
    for onset, at in zip(onsets, expected, strict=True):
        assert abs(onset - at) < RATE // FPS // 8


def test_44_1_khz_stereo_stays_within_a_sample_of_the_video_over_many_short_segments(tmp_path: Path) -> None:
    stereo = AudioFormat(sample_rate=44_100, channels=2)
    encoder = Fmp4Encoder(width=WIDTH, height=HEIGHT, fps=FPS, audio_format=stereo)
    tone, num_frames, count = Tone(stereo), 7, 12  # 7 frames own 12862 of 12862.5 samples
    lead = lead_frames(FPS, stereo.sample_rate)
    data = b""
    for k in range(count):
        first = lead + k * num_frames
        data += data_of(encoder.encode_segment(frames_of(num_frames, first), tone.segment(first, num_frames)))
    path = tmp_path / "all.mp4"
    path.write_bytes(data)
    assert_continuous(packet_spans(probe(path), "aac"), "audio")
    onsets = click_onsets(decoded_audio(path), stereo.sample_rate)
    last_start = frame_sample_offset(lead + (count - 1) * num_frames, FPS, stereo.sample_rate)
    heard = [o for o in onsets if abs(o - last_start) < stereo.sample_rate // FPS]
    assert heard and abs(heard[0] - last_start) <= 2 + stereo.sample_rate // FPS // 8


def test_bare_frames_get_silence_and_wrong_audio_is_a_value_error() -> None:
    encoder = Fmp4Encoder(width=WIDTH, height=HEIGHT, fps=FPS, audio_format=MONO)
    with encoder.encode_stream(iter([frames_of(4)]), num_frames=4) as stream:
        assert len(list(stream)) == 5
    with pytest.raises(ValueError, match="samples"):
        encoder.encode_segment(frames_of(4), np.zeros((100, 1), np.float32))
    with pytest.raises(ValueError, match="shape"):
        encoder.encode_segment(frames_of(4), np.zeros((8000, 2), np.float32))


def test_without_an_audio_format_the_output_is_video_only_from_zero(tmp_path: Path) -> None:
    encoder = Fmp4Encoder(width=WIDTH, height=HEIGHT, fps=FPS)
    assert encoder.mime == f'video/mp4; codecs="{encoder.codec_string}"'
    assert encoder.audio_codec_string is None
    segment = encoder.encode_segment(frames_of(6), np.full((12000, 1), CLICK_AMPLITUDE, np.float32))
    assert segment.pts_base_ms == 0.0 and segment.mime == encoder.mime
    path = tmp_path / "video.mp4"
    path.write_bytes(data_of(segment))
    assert [s["codec_name"] for s in probe(path)["streams"]] == ["h264"]


def _native_threads() -> int:
    status = Path("/proc/self/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith("Threads:")).split()[1])


def test_closing_an_encoder_frees_its_audio_threads_without_a_garbage_collection() -> None:
    # PyAV's resampler in the AAC context keeps a filter graph with a thread per core; the
    # encoder's PyAV objects refer to each other, so only close() frees them before a GC pass.
    gc.disable()
    try:
        before = _native_threads()
        encoder = Fmp4Encoder(width=WIDTH, height=HEIGHT, fps=FPS, audio_format=MONO)
        pcm = np.zeros((frame_sample_offset(6, FPS, RATE), 1), np.float32)
        with encoder.encode_stream(iter([(frames_of(6), pcm)]), num_frames=6) as stream:
            list(stream)
        encoder.close()
        del encoder, stream
        assert _native_threads() == before
    finally:
        gc.enable()
