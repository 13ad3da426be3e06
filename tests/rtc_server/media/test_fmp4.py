"""The in-process fMP4 encoder, checked with the real ffprobe/ffmpeg on what it produces."""

from __future__ import annotations

import json
import math
import os
import queue
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from rtc_server.media.fmp4 import Fmp4Encoder, Fmp4Segment, codec_string_from_init

pytestmark = pytest.mark.skipif(
    shutil.which("ffprobe") is None or shutil.which("ffmpeg") is None,
    reason="needs ffprobe and ffmpeg (Debian package ffmpeg)",
)

WIDTH, HEIGHT, FPS = 96, 64, 24
FFPROBE_TIMEOUT_S = 30


def moving_frames(num_frames: int, width: int = WIDTH, height: int = HEIGHT, start: int = 0) -> np.ndarray:
    """Deterministic moving gradient + noise, so every frame differs (no all-skip P-frames)."""
    rng = np.random.default_rng(start)
    y, x = np.mgrid[0:height, 0:width]
    frames = np.empty((num_frames, height, width, 3), np.uint8)
    for i in range(num_frames):
        t = start + i
        frames[i, ..., 0] = (x * 2 + t * 5) % 256
        frames[i, ..., 1] = (y * 3 + t * 3) % 256
        frames[i, ..., 2] = rng.integers(0, 64, size=(height, width)) + 96
    return frames


def write(path: Path, *parts: bytes) -> Path:
    path.write_bytes(b"".join(parts))
    return path


def segment_bytes(segment: Fmp4Segment) -> bytes:
    return segment.init + b"".join(segment.fragments)


def ffprobe(path: Path, *args: str) -> dict[str, Any]:
    result = subprocess.run(
        ["ffprobe", "-v", "error", "-of", "json", *args, str(path)],
        capture_output=True,
        check=True,
        timeout=FFPROBE_TIMEOUT_S,
    )
    return json.loads(result.stdout)


def probe_stream(path: Path) -> dict[str, Any]:
    streams = ffprobe(path, "-count_frames", "-show_streams")["streams"]
    assert len(streams) == 1
    return streams[0]


def probe_packets(path: Path) -> list[dict[str, Any]]:
    return ffprobe(path, "-show_packets", "-show_entries", "packet=pts,dts,duration,flags")["packets"]


def top_level_boxes(data: bytes) -> list[bytes]:
    """Types of the top-level ISO BMFF boxes; asserts they tile the data exactly."""
    types, offset = [], 0
    while offset < len(data):
        size = int.from_bytes(data[offset : offset + 4], "big")
        assert size >= 8, f"bad box size {size} at {offset}"
        types.append(data[offset + 4 : offset + 8])
        offset += size
    assert offset == len(data), "boxes do not end where the data ends"
    return types


def child_payload(data: bytes, box_type: bytes, skip: int = 0) -> bytes:
    """Payload of the first direct child box of ``data`` with ``box_type`` (``skip`` header bytes)."""
    offset = 0
    while offset + 8 <= len(data):
        size = int.from_bytes(data[offset : offset + 4], "big")
        if data[offset + 4 : offset + 8] == box_type:
            return data[offset + 8 + skip : offset + size]
        offset += size
    raise AssertionError(f"no {box_type!r} box")


def timescale(init: bytes) -> int:
    mdhd = child_payload(
        child_payload(child_payload(child_payload(init, b"moov"), b"trak"), b"mdia"), b"mdhd"
    )
    # FullBox: version 1 has 64-bit times, version 0 32-bit ones, before the timescale.
    return int.from_bytes(mdhd[20:24] if mdhd[0] == 1 else mdhd[12:16], "big")


def first_tfdt(fragment: bytes) -> int:
    tfdt = child_payload(child_payload(child_payload(fragment, b"moof"), b"traf"), b"tfdt")
    return int.from_bytes(tfdt[4:12] if tfdt[0] == 1 else tfdt[4:8], "big")


def decode_rgb(path: Path, width: int = WIDTH, height: int = HEIGHT) -> np.ndarray:
    raw = subprocess.run(
        ["ffmpeg", "-v", "error", "-i", str(path), "-f", "rawvideo", "-pix_fmt", "rgb24", "-"],
        capture_output=True,
        check=True,
        timeout=FFPROBE_TIMEOUT_S,
    ).stdout
    return np.frombuffer(raw, np.uint8).reshape(-1, height, width, 3)


@pytest.mark.parametrize(("width", "height", "num_frames"), [(96, 64, 24), (320, 240, 7), (64, 64, 1)])
def test_each_segment_decodes_to_its_frames_at_the_configured_size(
    tmp_path: Path, width: int, height: int, num_frames: int
) -> None:
    encoder = Fmp4Encoder(width=width, height=height, fps=FPS)
    segment = encoder.encode_segment(moving_frames(num_frames, width, height))
    stream = probe_stream(write(tmp_path / "seg.mp4", segment_bytes(segment)))
    assert stream["codec_name"] == "h264"
    assert int(stream["nb_read_frames"]) == num_frames
    assert (stream["width"], stream["height"]) == (width, height)
    assert stream["pix_fmt"] == "yuv420p"
    assert stream["has_b_frames"] == 0
    assert segment.duration_ms == pytest.approx(num_frames * 1000 / FPS)
    assert segment.pts_base_ms == 0.0


def test_segments_appended_like_mse_play_as_one_gap_free_stream(tmp_path: Path) -> None:
    num_frames, count = 12, 3
    encoder = Fmp4Encoder(width=WIDTH, height=HEIGHT, fps=FPS)
    segments = [encoder.encode_segment(moving_frames(num_frames, start=k * num_frames)) for k in range(count)]

    # What an MSE client appends: each segment's init (same codec config) then its fragments.
    path = write(tmp_path / "all.mp4", *(segment_bytes(s) for s in segments))
    assert int(probe_stream(path)["nb_read_frames"]) == num_frames * count

    packets = probe_packets(path)
    assert len(packets) == num_frames * count
    pts = [int(p["pts"]) for p in packets]
    assert pts == [int(p["dts"]) for p in packets], "pts != dts: B-frames or reordering"
    step = pts[1] - pts[0]
    assert step > 0
    assert pts == [pts[0] + i * step for i in range(len(pts))], "gap, overlap or jump between segments"
    assert pts[0] == 0
    keyframes = [i for i, p in enumerate(packets) if "K" in p["flags"]]
    assert keyframes[: count] == [k * num_frames for k in range(count)]

    for k, segment in enumerate(segments):
        assert segment.pts_base_ms == pytest.approx(k * num_frames * 1000 / FPS)
        # The decode time MSE places the segment at is the one announced in pts_base_ms.
        tfdt_ms = first_tfdt(segment.fragments[0]) * 1000 / timescale(segment.init)
        assert tfdt_ms == pytest.approx(segment.pts_base_ms)
    assert encoder.next_pts_ms == pytest.approx(count * num_frames * 1000 / FPS)


def test_init_is_ftyp_moov_and_identical_across_segments() -> None:
    encoder = Fmp4Encoder(width=WIDTH, height=HEIGHT, fps=FPS)
    first = encoder.encode_segment(moving_frames(5))
    second = encoder.encode_segment(moving_frames(5, start=5))
    assert top_level_boxes(first.init) == [b"ftyp", b"moov"]
    assert first.init == second.init


@pytest.mark.parametrize(("frames_per_fragment", "num_frames"), [(1, 10), (4, 10), (24, 10)])
def test_fragments_are_moof_mdat_pairs_cut_every_n_frames(frames_per_fragment: int, num_frames: int) -> None:
    encoder = Fmp4Encoder(width=WIDTH, height=HEIGHT, fps=FPS, frames_per_fragment=frames_per_fragment)
    segment = encoder.encode_segment(moving_frames(num_frames))
    assert len(segment.fragments) == math.ceil(num_frames / frames_per_fragment)
    for fragment in segment.fragments:
        assert top_level_boxes(fragment) == [b"moof", b"mdat"]


@pytest.mark.parametrize(("profile", "ffprobe_profile", "profile_idc"), [
    ("baseline", "Constrained Baseline", 0x42),
    ("main", "Main", 0x4D),
])
def test_codec_string_is_the_avcc_of_the_init(
    tmp_path: Path, profile: str, ffprobe_profile: str, profile_idc: int
) -> None:
    encoder = Fmp4Encoder(width=320, height=240, fps=FPS, profile=profile, preset="veryfast")
    segment = encoder.encode_segment(moving_frames(6, 320, 240))

    # Read the AVCDecoderConfigurationRecord independently of the encoder's own parser.
    at = segment.init.index(b"avcC") + 4
    record = segment.init[at : at + 4]
    assert record[0] == 1  # configurationVersion
    expected = f"avc1.{record[1]:02X}{record[2]:02X}{record[3]:02X}"
    assert segment.codec_string == expected == encoder.codec_string
    assert codec_string_from_init(segment.init) == expected
    assert segment.mime == f'video/mp4; codecs="{expected}"' == encoder.mime
    assert record[1] == profile_idc

    stream = probe_stream(write(tmp_path / "seg.mp4", segment_bytes(segment)))
    assert stream["profile"] == ffprobe_profile
    assert stream["level"] == record[3]
    assert stream["has_b_frames"] == 0
    assert all(p["pts"] == p["dts"] for p in probe_packets(tmp_path / "seg.mp4"))


def test_bitrate_mode_produces_a_valid_segment(tmp_path: Path) -> None:
    encoder = Fmp4Encoder(width=WIDTH, height=HEIGHT, fps=30, bitrate=300_000)
    segment = encoder.encode_segment(moving_frames(15))
    assert int(probe_stream(write(tmp_path / "seg.mp4", segment_bytes(segment)))["nb_read_frames"]) == 15
    assert segment.duration_ms == pytest.approx(500.0)


def test_colours_survive_the_round_trip(tmp_path: Path) -> None:
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255), (0, 0, 0), (128, 64, 200)]
    frames = np.stack([np.full((HEIGHT, WIDTH, 3), c, np.uint8) for c in colours])
    segment = Fmp4Encoder(width=WIDTH, height=HEIGHT, fps=FPS, crf=10).encode_segment(frames)
    path = write(tmp_path / "colours.mp4", segment_bytes(segment))
    stream = probe_stream(path)
    # Tagged, so a player does not have to guess the YUV matrix.
    assert (stream["color_space"], stream["color_range"]) == ("bt709", "tv")
    decoded = decode_rgb(path)
    centre = decoded[:, HEIGHT // 2, WIDTH // 2].astype(int)
    assert np.abs(centre - np.array(colours)).max() <= 4


def test_stream_yields_init_first_and_streams_frames_lazily(tmp_path: Path) -> None:
    num_frames = 8
    encoder = Fmp4Encoder(width=WIDTH, height=HEIGHT, fps=FPS)
    frames = moving_frames(num_frames)
    stream = encoder.encode_segment_iter(frames)
    # Known before any encoding, for the media_init message.
    assert stream.mime == encoder.mime
    assert (stream.pts_base_ms, stream.duration_ms) == (0.0, pytest.approx(num_frames * 1000 / FPS))

    init = next(stream)
    assert top_level_boxes(init) == [b"ftyp", b"moov"]
    first_fragment = next(stream)
    assert top_level_boxes(first_fragment) == [b"moof", b"mdat"]
    assert stream.media_chunks == 1
    # The first fragment left before the last frame was read: changing it now still shows up.
    frames[-1] = 0
    rest = list(stream)
    assert stream.done and stream.media_chunks == num_frames == 1 + len(rest)

    decoded = decode_rgb(write(tmp_path / "lazy.mp4", init, first_fragment, *rest))
    assert len(decoded) == num_frames
    assert decoded[-1].mean() < 8
    assert decoded[0].mean() > 64


def test_an_abandoned_stream_keeps_its_place_on_the_timeline(tmp_path: Path) -> None:
    encoder = Fmp4Encoder(width=WIDTH, height=HEIGHT, fps=FPS)
    with encoder.encode_segment_iter(moving_frames(6)) as stream:
        next(stream)
        next(stream)
    later = encoder.encode_segment(moving_frames(6, start=6))
    assert later.pts_base_ms == pytest.approx(6 * 1000 / FPS)
    assert int(probe_stream(write(tmp_path / "later.mp4", segment_bytes(later)))["nb_read_frames"]) == 6


def test_segments_encoded_from_two_threads_get_disjoint_time_ranges(tmp_path: Path) -> None:
    encoder = Fmp4Encoder(width=WIDTH, height=HEIGHT, fps=FPS)
    results: list[Fmp4Segment] = []
    lock = threading.Lock()

    def work(start: int) -> None:
        segment = encoder.encode_segment(moving_frames(6, start=start))
        with lock:
            results.append(segment)

    threads = [threading.Thread(target=work, args=(k * 6,)) for k in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    bases = sorted(s.pts_base_ms for s in results)
    assert bases == [0.0, pytest.approx(250.0)]
    for k, segment in enumerate(results):
        assert int(probe_stream(write(tmp_path / f"t{k}.mp4", segment_bytes(segment)))["nb_read_frames"]) == 6


@pytest.mark.parametrize(
    ("frames", "message"),
    [
        (np.zeros((4, HEIGHT, WIDTH), np.uint8), "shape"),
        (np.zeros((4, WIDTH, HEIGHT, 3), np.uint8), "shape"),
        (np.zeros((4, HEIGHT, WIDTH, 4), np.uint8), "shape"),
        (np.zeros((HEIGHT, WIDTH, 3), np.uint8), "shape"),
        (np.zeros((0, HEIGHT, WIDTH, 3), np.uint8), "at least one frame"),
        (np.zeros((4, HEIGHT, WIDTH, 3), np.float32), "uint8"),
        (np.zeros((4, HEIGHT, WIDTH, 3), np.uint16), "uint8"),
    ],
)
def test_bad_frames_raise_a_clear_value_error(frames: Any, message: str) -> None:
    encoder = Fmp4Encoder(width=WIDTH, height=HEIGHT, fps=FPS)
    with pytest.raises(ValueError, match=message):
        encoder.encode_segment(frames)
    with pytest.raises(ValueError, match=message):
        encoder.encode_segment_iter(frames)
    assert encoder.next_pts_ms == 0.0  # nothing was reserved on the timeline


def test_frames_that_are_not_an_array_raise_type_error() -> None:
    encoder = Fmp4Encoder(width=WIDTH, height=HEIGHT, fps=FPS)
    with pytest.raises(TypeError, match="numpy array"):
        encoder.encode_segment([[0]])  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"width": 95}, "even"),
        ({"height": 0}, "even"),
        ({"fps": 0}, "fps"),
        ({"crf": 0}, "crf"),
        ({"crf": 52}, "crf"),
        ({"bitrate": 0}, "bitrate"),
        ({"preset": "warp"}, "preset"),
        ({"profile": "high"}, "profile"),
        ({"frames_per_fragment": 0}, "frames_per_fragment"),
    ],
)
def test_bad_settings_raise_a_clear_value_error(kwargs: dict[str, Any], message: str) -> None:
    settings: dict[str, Any] = {"width": WIDTH, "height": HEIGHT, "fps": FPS, **kwargs}
    with pytest.raises(ValueError, match=message):
        Fmp4Encoder(**settings)


# -- frames handed over as they are made (encode_stream) ------------------------------------------

PRODUCER_WAIT_S = 10.0  # a pull that waits this long means the encoder asked for a frame too early


class GatedProducer:
    """A producer thread that makes frame k only once ``release(k)`` is called, handing it over a queue.

    Iterating it pulls the frames (what the encoder does); a pull that would wait for a frame that is
    not yet released fails the test instead of hanging it.
    """

    _END = object()

    def __init__(self, frames: np.ndarray) -> None:
        self._frames = frames
        self._queue: queue.Queue[object] = queue.Queue()
        self._gates = [threading.Event() for _ in range(len(frames))]
        self._made: list[int] = []
        self.closed = False
        self._thread = threading.Thread(target=self._produce, name="gated-producer")
        self._thread.start()

    @property
    def made(self) -> int:
        """Frames that exist so far."""
        return len(self._made)

    def release(self, index: int) -> None:
        self._gates[index].set()

    def _produce(self) -> None:
        for index, gate in enumerate(self._gates):
            if not gate.wait(PRODUCER_WAIT_S):
                break
            self._made.append(index)
            self._queue.put(self._frames[index].copy())  # the frame comes into existence now
        self._queue.put(self._END)

    def __iter__(self) -> GatedProducer:
        return self

    def __next__(self) -> np.ndarray:
        try:
            item = self._queue.get(timeout=PRODUCER_WAIT_S)
        except queue.Empty:
            raise AssertionError(f"the encoder pulled a frame that does not exist yet ({self.made} made)") from None
        if item is self._END:
            raise StopIteration
        assert isinstance(item, np.ndarray)
        return item

    def close(self) -> None:
        self.closed = True

    def join(self) -> None:
        for gate in self._gates:
            gate.set()  # let a producer that is still waiting run out
        self._thread.join(PRODUCER_WAIT_S)


def chunked(frames: np.ndarray, sizes: list[int]) -> Iterator[np.ndarray]:
    """``frames`` cut into (n, H, W, 3) chunks of ``sizes``."""
    at = 0
    for size in sizes:
        yield frames[at : at + size]
        at += size
    assert at == len(frames)


def one_by_one(frames: np.ndarray) -> Iterator[np.ndarray]:
    yield from frames


def packet_times(path: Path) -> list[tuple[int, int, int, bool]]:
    return [(int(p["pts"]), int(p["dts"]), int(p["duration"]), "K" in p["flags"]) for p in probe_packets(path)]


def test_the_init_and_the_first_fragment_leave_before_later_frames_exist(tmp_path: Path) -> None:
    num_frames = 4
    frames = moving_frames(num_frames)
    encoder = Fmp4Encoder(width=WIDTH, height=HEIGHT, fps=FPS)
    producer = GatedProducer(frames)
    try:
        stream = encoder.encode_stream(producer, num_frames=num_frames)
        init = next(stream)
        assert top_level_boxes(init) == [b"ftyp", b"moov"]
        assert producer.made == 0  # the init needed no frame

        producer.release(0)
        first = next(stream)
        assert top_level_boxes(first) == [b"moof", b"mdat"]
        assert producer.made == 1  # out after one frame's encode, not held for the next frame
        assert stream.media_chunks == 1
        assert int(probe_stream(write(tmp_path / "first.mp4", init, first))["nb_read_frames"]) == 1

        fragments = [first]
        for index in range(1, num_frames):
            producer.release(index)
            fragments.append(next(stream))
            assert producer.made == index + 1
        assert list(stream) == []
    finally:
        producer.join()
    assert stream.done and stream.num_frames == num_frames == stream.media_chunks
    decoded = decode_rgb(write(tmp_path / "all.mp4", init, *fragments))
    assert len(decoded) == num_frames
    assert np.abs(decoded.astype(int) - frames.astype(int)).mean() < 12


@pytest.mark.parametrize("frames_per_fragment", [1, 4])
def test_chunks_of_mixed_sizes_decode_like_the_whole_array(tmp_path: Path, frames_per_fragment: int) -> None:
    num_frames = 11
    frames = moving_frames(num_frames)
    whole = Fmp4Encoder(width=WIDTH, height=HEIGHT, fps=FPS, frames_per_fragment=frames_per_fragment)
    streamed = Fmp4Encoder(width=WIDTH, height=HEIGHT, fps=FPS, frames_per_fragment=frames_per_fragment)
    reference = whole.encode_segment(frames)

    def items() -> Iterator[np.ndarray]:
        yield frames[0]  # a single (H, W, 3) frame
        yield from chunked(frames[1:10], [3, 0, 5, 1])  # chunks, an empty one among them
        yield frames[10]

    with streamed.encode_stream(items(), num_frames=num_frames) as stream:
        chunks = list(stream)
    assert chunks[0] == reference.init
    assert len(chunks) - 1 == len(reference.fragments) == math.ceil(num_frames / frames_per_fragment)
    assert (stream.num_frames, stream.duration_ms) == (num_frames, pytest.approx(reference.duration_ms))

    reference_path = write(tmp_path / "whole.mp4", segment_bytes(reference))
    streamed_path = write(tmp_path / "streamed.mp4", *chunks)
    reference_stream, streamed_stream = probe_stream(reference_path), probe_stream(streamed_path)
    for key in ("nb_read_frames", "width", "height", "pix_fmt", "time_base"):
        assert streamed_stream[key] == reference_stream[key], key
    assert int(streamed_stream["nb_read_frames"]) == num_frames
    assert packet_times(streamed_path) == packet_times(reference_path)
    assert np.array_equal(decode_rgb(streamed_path), decode_rgb(reference_path))


def test_streamed_segments_appended_like_mse_play_as_one_gap_free_stream(tmp_path: Path) -> None:
    num_frames, count = 8, 3
    encoder = Fmp4Encoder(width=WIDTH, height=HEIGHT, fps=FPS)
    sources = [
        lambda frames: one_by_one(frames),
        lambda frames: chunked(frames, [5, 3]),
        lambda frames: chunked(frames, [1, 2, 2, 3]),
    ]
    segments: list[tuple[list[bytes], float]] = []
    for k, source in enumerate(sources):
        with encoder.encode_stream(source(moving_frames(num_frames, start=k * num_frames)), num_frames=num_frames) as stream:
            segments.append((list(stream), stream.pts_base_ms))

    path = write(tmp_path / "all.mp4", *(chunk for chunks, _ in segments for chunk in chunks))
    assert int(probe_stream(path)["nb_read_frames"]) == num_frames * count
    times = packet_times(path)
    pts = [t[0] for t in times]
    assert pts == [t[1] for t in times], "pts != dts"
    step = pts[1] - pts[0]
    assert pts == [i * step for i in range(num_frames * count)], "gap, overlap or jump between segments"
    assert [i for i, t in enumerate(times) if t[3]] == [k * num_frames for k in range(count)]
    for k, (chunks, pts_base_ms) in enumerate(segments):
        assert pts_base_ms == pytest.approx(k * num_frames * 1000 / FPS)
        assert first_tfdt(chunks[1]) * 1000 / timescale(chunks[0]) == pytest.approx(pts_base_ms)


@pytest.mark.parametrize(("frames_per_fragment", "fragments"), [(1, 5), (4, 2)])
def test_a_producer_that_stops_early_ends_the_segment_with_what_was_encoded(
    tmp_path: Path, frames_per_fragment: int, fragments: int
) -> None:
    declared, made = 8, 5
    encoder = Fmp4Encoder(width=WIDTH, height=HEIGHT, fps=FPS, frames_per_fragment=frames_per_fragment)
    stream = encoder.encode_stream(chunked(moving_frames(made), [2, 3]), num_frames=declared)
    # While it runs, the segment is what was declared (the WebSocket sink paces by it).
    assert (stream.num_frames, stream.duration_ms) == (declared, pytest.approx(declared * 1000 / FPS))
    chunks = list(stream)

    assert stream.done and stream.ended
    assert (stream.num_frames, stream.reserved_frames) == (made, declared)
    assert stream.duration_ms == pytest.approx(made * 1000 / FPS)
    assert stream.media_chunks == len(chunks) - 1 == fragments
    assert int(probe_stream(write(tmp_path / "short.mp4", *chunks))["nb_read_frames"]) == made

    # The frames never made keep their place: the next segment starts after the declared span.
    later = encoder.encode_segment(moving_frames(4, start=declared))
    assert later.pts_base_ms == pytest.approx(declared * 1000 / FPS)
    assert first_tfdt(later.fragments[0]) * 1000 / timescale(later.init) == pytest.approx(later.pts_base_ms)


def test_more_frames_than_declared_is_a_value_error_after_the_declared_ones_left(tmp_path: Path) -> None:
    declared = 3
    encoder = Fmp4Encoder(width=WIDTH, height=HEIGHT, fps=FPS)
    stream = encoder.encode_stream(one_by_one(moving_frames(declared + 1)), num_frames=declared)
    chunks = [next(stream) for _ in range(1 + declared)]  # init and every declared frame's fragment
    with pytest.raises(ValueError, match=f"more than the declared num_frames={declared}"):
        next(stream)
    assert stream.ended and not stream.done
    assert stream.num_frames == declared
    assert int(probe_stream(write(tmp_path / "seg.mp4", *chunks))["nb_read_frames"]) == declared
    assert encoder.next_pts_ms == pytest.approx(declared * 1000 / FPS)


def test_a_chunk_that_overshoots_the_declared_frames_is_refused_whole() -> None:
    encoder = Fmp4Encoder(width=WIDTH, height=HEIGHT, fps=FPS)
    stream = encoder.encode_stream(chunked(moving_frames(5), [2, 3]), num_frames=4)
    next(stream)
    fragments = [next(stream), next(stream)]
    with pytest.raises(ValueError, match="more than the declared num_frames=4"):
        next(stream)
    assert len(fragments) == stream.media_chunks == stream.num_frames == 2


THREADS_EXIT_S = 2.0  # an OS thread may outlive its join() by a moment


def live_threads() -> int:
    """OS threads of this process: libx264's worker threads live exactly as long as its encoder."""
    return len(os.listdir("/proc/self/task"))


def threads_after_exits(most: int) -> int:
    """The OS thread count once it is down to ``most`` or ``THREADS_EXIT_S`` has passed."""
    deadline = time.monotonic() + THREADS_EXIT_S
    while (count := live_threads()) > most and time.monotonic() < deadline:
        time.sleep(0.01)
    return count


@pytest.mark.parametrize(
    ("bad", "error", "message"),
    [
        (np.zeros((2, 240, 320, 3), np.float32), ValueError, "dtype uint8"),
        (np.zeros((2, 240, 320), np.uint8), ValueError, r"shape \(240, 320, 3\) or \(n, 240, 320, 3\)"),
        (np.zeros((240, 320, 4), np.uint8), ValueError, "shape"),
        (np.zeros((2, 320, 240, 3), np.uint8), ValueError, "shape"),
        ([[0, 0, 0]], TypeError, "numpy arrays"),
    ],
)
def test_a_bad_chunk_mid_stream_raises_a_clear_error_and_releases_the_encoder(
    tmp_path: Path, bad: Any, error: type[Exception], message: str
) -> None:
    width, height = 320, 240
    frames = moving_frames(3, width, height)
    producer_closed = threading.Event()

    def producer() -> Iterator[Any]:
        try:
            yield frames[0]
            yield frames[1:3]
            yield bad
            yield frames[0]  # never reached
        finally:
            producer_closed.set()

    # Explicit libx264 threads, so that a live encoder shows in the process's thread count.
    encoder = Fmp4Encoder(width=width, height=height, fps=FPS, threads=4)
    before = live_threads()
    stream = encoder.encode_stream(producer(), num_frames=8)
    chunks = [next(stream) for _ in range(4)]  # init and three fragments
    assert live_threads() > before  # the encoder is running
    with pytest.raises(error, match=message):
        next(stream)

    # Released at once (the stream is still referenced here, so not by garbage collection).
    assert threads_after_exits(before) <= before
    assert producer_closed.is_set()
    assert stream.ended and not stream.done
    assert list(stream) == []
    assert (stream.num_frames, stream.media_chunks) == (3, 3)
    assert int(probe_stream(write(tmp_path / "partial.mp4", *chunks))["nb_read_frames"]) == 3
    # The encoder goes on; the failed segment keeps its declared place.
    later = encoder.encode_segment(moving_frames(2, width, height, start=8))
    assert later.pts_base_ms == pytest.approx(8 * 1000 / FPS)


def test_closing_a_stream_early_releases_the_encoder_and_closes_the_producer() -> None:
    encoder = Fmp4Encoder(width=320, height=240, fps=FPS, threads=4)
    before = live_threads()
    producer = GatedProducer(moving_frames(4, 320, 240))
    try:
        stream = encoder.encode_stream(producer, num_frames=4)
        next(stream)
        producer.release(0)
        next(stream)
        stream.close()
    finally:
        producer.join()
    assert threads_after_exits(before) <= before  # libx264's threads and the finished producer's are gone
    assert producer.closed and stream.ended and not stream.done
    assert (stream.num_frames, stream.media_chunks) == (1, 1)
    assert encoder.next_pts_ms == pytest.approx(4 * 1000 / FPS)


def test_closing_a_stream_before_it_starts_closes_the_producer_and_keeps_the_place() -> None:
    producer_closed = threading.Event()

    def producer() -> Iterator[np.ndarray]:
        try:
            yield from moving_frames(3)
        finally:
            producer_closed.set()

    frames = producer()
    next(frames)  # started, so that closing it runs its finally
    encoder = Fmp4Encoder(width=WIDTH, height=HEIGHT, fps=FPS)
    stream = encoder.encode_stream(frames, num_frames=3)
    stream.close()
    assert producer_closed.is_set()
    assert stream.ended and (stream.num_frames, stream.media_chunks) == (0, 0)
    assert list(stream) == []
    assert encoder.next_pts_ms == pytest.approx(3 * 1000 / FPS)


@pytest.mark.parametrize(
    ("frames", "num_frames", "error", "message"),
    [
        ([], 0, ValueError, "num_frames must be >= 1"),
        (42, 3, TypeError, "not iterable"),
    ],
)
def test_a_stream_that_cannot_start_reserves_nothing(
    frames: Any, num_frames: int, error: type[Exception], message: str
) -> None:
    encoder = Fmp4Encoder(width=WIDTH, height=HEIGHT, fps=FPS)
    with pytest.raises(error, match=message):
        encoder.encode_stream(frames, num_frames=num_frames)
    assert encoder.next_pts_ms == 0.0
