"""The frame marker: exact round trips, round trips through real lossy codecs, checksum rejection."""

from __future__ import annotations

import fractions
import io
import time

import av
import numpy as np
import pytest

from gpu.frame_marker import (
    FrameMarker,
    cell_size_for_width,
    draw_marker,
    marker_region,
    prompt_tag,
    read_marker,
)
from gpu.generator import SegmentRequest
from gpu.synthetic import SyntheticGenerator

LOW_BITRATE_BPS = 300_000
TORTURE_PROMPT = "codec torture"


def _frame(width: int, height: int, fill: int = 90) -> np.ndarray:
    return np.full((height, width, 3), fill, dtype=np.uint8)


@pytest.mark.parametrize(
    ("width", "height", "marker"),
    [
        (256, 256, FrameMarker(0, 0)),
        (512, 512, FrameMarker(65535, 2**24 - 1, 2**16 - 1)),
        (128, 64, FrameMarker(12345, 987654, 4321)),
        (96, 64, FrameMarker(7, 123, 1)),
        (32, 32, FrameMarker(1, 2, 3)),
    ],
)
def test_marker_round_trips_from_rgb_and_luma(width: int, height: int, marker: FrameMarker) -> None:
    frame = _frame(width, height)
    draw_marker(frame, marker)
    assert read_marker(frame) == marker
    assert read_marker(np.ascontiguousarray(frame[:, :, 0])) == marker


def test_marker_reads_from_luma_plane_padded_wider_than_frame() -> None:
    frame = _frame(96, 64)  # 4-pixel cells, inside a plane padded to 128 (where 8 would be implied)
    draw_marker(frame, FrameMarker(42, 4242))
    plane = np.zeros((64, 128), dtype=np.uint8)
    plane[:, :96] = frame[:, :, 1]
    assert read_marker(plane) == FrameMarker(42, 4242)
    assert read_marker(plane, cell_px=cell_size_for_width(96)) == FrameMarker(42, 4242)


def test_marker_values_wrap_to_their_field_widths() -> None:
    frame = _frame(256, 256)
    draw_marker(frame, FrameMarker(2**16 + 5, 2**24 + 9, 2**16 + 11))
    assert read_marker(frame) == FrameMarker(5, 9, 11)


def test_marker_cells_are_16px_from_512px_wide_8px_from_128px_and_4px_below() -> None:
    assert marker_region(1920, 1080) == marker_region(512, 512) == (128, 128)
    assert marker_region(511, 512) == marker_region(128, 128) == (64, 64)
    assert marker_region(127, 128) == (32, 32)


def test_draw_marker_touches_only_its_region() -> None:
    frame = _frame(256, 200)
    draw_marker(frame, FrameMarker(3, 4))
    region_w, region_h = marker_region(256, 200)
    outside = frame.copy()
    outside[:region_h, :region_w] = 90
    assert np.all(outside == 90)
    assert set(np.unique(frame[:region_h, :region_w])) == {0, 255}


def test_draw_marker_rejects_frames_smaller_than_the_marker() -> None:
    with pytest.raises(ValueError, match="smaller than the marker"):
        draw_marker(_frame(30, 30), FrameMarker(0, 0))


def test_prompt_tag_is_a_stable_16_bit_hash_that_tells_prompts_apart() -> None:
    assert prompt_tag("a red fox") == prompt_tag("a red fox")
    assert 0 <= prompt_tag("a red fox") < 2**16
    # 200 prompts in 2**16 tags: about 0.3 colliding pairs expected (birthday bound); more than a
    # handful would mean a poor hash.
    tags = {prompt_tag(f"prompt number {i}") for i in range(200)}
    assert len(tags) >= 195


def test_marker_carries_the_prompt_tag() -> None:
    frame = _frame(256, 256)
    draw_marker(frame, FrameMarker(3, 40, prompt_tag("neon city")))
    marker = read_marker(frame)
    assert marker is not None and marker.prompt_tag == prompt_tag("neon city")


def test_marker_values_must_be_non_negative() -> None:
    with pytest.raises(ValueError):
        FrameMarker(-1, 0)


@pytest.mark.parametrize("fill", [0, 255, 128])
def test_blank_frames_have_no_marker(fill: int) -> None:
    assert read_marker(_frame(256, 256, fill)) is None


def test_noise_has_no_marker() -> None:
    rng = np.random.default_rng(7)
    found = [read_marker(rng.integers(0, 256, (64, 128), dtype=np.uint8)) for _ in range(500)]
    assert found == [None] * 500


def test_checksum_rejects_a_flipped_cell() -> None:
    frame = _frame(256, 256)
    draw_marker(frame, FrameMarker(100, 200))
    frame[8:16, 16:24] = 255 - frame[8:16, 16:24]  # flip cell (row 1, column 2)
    assert read_marker(frame) is None


def test_reading_with_the_wrong_cell_size_finds_nothing() -> None:
    found = []
    frame = _frame(100, 64)
    for number in range(300):
        draw_marker(frame, FrameMarker(number, number * 31))
        found.append(read_marker(frame, cell_px=8))
    assert found == [None] * 300


def test_read_marker_takes_microseconds() -> None:
    frame = _frame(512, 512)
    draw_marker(frame, FrameMarker(1, 2))
    plane = np.ascontiguousarray(frame[:, :, 0])
    reads = 2000
    started = time.perf_counter()
    for _ in range(reads):
        read_marker(plane)
    per_read_s = (time.perf_counter() - started) / reads
    assert per_read_s < 500e-6  # measured ~25 us; generous for loaded CI machines


def _encode_decode_luma(frames: np.ndarray, codec: str, container_format: str) -> list[np.ndarray]:
    """Encode RGB frames at a low bitrate in memory, decode them, return padded Y planes."""
    height, width = frames.shape[1:3]
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format=container_format) as output:
        stream = output.add_stream(codec, rate=24)
        assert isinstance(stream, av.VideoStream)
        stream.width, stream.height = width, height
        stream.pix_fmt = "yuv420p"
        stream.bit_rate = LOW_BITRATE_BPS
        for rgb in frames:
            output.mux(stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")))
        output.mux(stream.encode(None))
    buffer.seek(0)
    planes = []
    with av.open(buffer, mode="r") as decoded:
        for frame in decoded.decode(video=0):
            luma = frame.planes[0]
            planes.append(
                np.frombuffer(memoryview(luma), dtype=np.uint8).reshape(-1, luma.line_size)[: frame.height]
            )
    return planes


def _noisy_stream(width: int, height: int, num_frames: int) -> np.ndarray:
    """Moving synthetic frames with heavy noise on top, so the encoder has to throw detail away."""
    result = SyntheticGenerator().generate(
        SegmentRequest(
            prompt=TORTURE_PROMPT, width=width, height=height, num_frames=num_frames, segment_idx=9
        )
    )
    noise = np.random.default_rng(0).integers(-40, 41, result.frames.shape)
    noisy: np.ndarray = np.clip(result.frames.astype(np.int16) + noise, 0, 255).astype(np.uint8)
    return noisy


@pytest.mark.parametrize(("codec", "container_format"), [("libvpx", "webm"), ("libx264", "mp4")])
@pytest.mark.parametrize(("width", "height"), [(256, 256), (200, 120), (96, 64)])
def test_markers_survive_low_bitrate_lossy_compression(
    codec: str, container_format: str, width: int, height: int
) -> None:
    frames = _noisy_stream(width, height, num_frames=36)
    planes = _encode_decode_luma(frames, codec, container_format)
    assert len(planes) == len(frames)
    tag = prompt_tag(TORTURE_PROMPT)  # the synthetic generator tags every frame with its prompt
    assert [read_marker(plane) for plane in planes] == [FrameMarker(9, n, tag) for n in range(len(frames))]


def test_markers_at_512px_survive_a_real_time_vp8_stream() -> None:
    """aiortc's own VP8 encoder at the default 1.5 Mbps: its loop filter smeared 8-px cells in busy
    scenes (42 of these 288 frames unreadable); 16-px cells span whole macroblocks and all read."""
    from aiortc.codecs.vpx import Vp8Decoder, Vp8Encoder, VpxPayloadDescriptor
    from aiortc.jitterbuffer import JitterFrame

    generator, state = SyntheticGenerator(), None
    encoder, decoder = Vp8Encoder(), Vp8Decoder()
    encoder.target_bitrate = 1_500_000
    expected: list[FrameMarker | None] = []
    read: list[FrameMarker | None] = []
    for segment in range(12):
        result = generator.generate(
            SegmentRequest(prompt="a slow drift", width=512, height=512, num_frames=24, segment_idx=segment, continuation=state)
        )
        state = result.continuation
        for rgb in result.frames:
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            frame.pts, frame.time_base = len(expected) * 3750, fractions.Fraction(1, 90_000)
            expected.append(read_marker(rgb))
            payloads, timestamp = encoder.encode(frame)
            data = b"".join(VpxPayloadDescriptor.parse(payload)[1] for payload in payloads)
            decoded = decoder.decode(JitterFrame(data, timestamp))
            read.extend(read_marker(out.to_ndarray(format="rgb24")) for out in decoded if isinstance(out, av.VideoFrame))
    assert None not in expected and read == expected
