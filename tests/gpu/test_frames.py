"""Frame conversions: float to uint8 with rounding and clipping, layouts, PIL, PNG text round trips."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from PIL import Image

from gpu.frames import (
    FrameFormatError,
    decode_png,
    encode_png,
    float_to_uint8,
    tensor_to_uint8_frames,
    to_pil_frames,
    to_uint8_frames,
)


def _frames(count: int = 2, height: int = 4, width: int = 5) -> np.ndarray:
    rng = np.random.default_rng(7)
    return rng.integers(0, 256, size=(count, height, width, 3), dtype=np.uint8)


def test_float_to_uint8_rounds_to_nearest_and_clips() -> None:
    values = np.array([-0.5, 0.0, 0.5 / 255, 0.6 / 255, 0.5, 254.4 / 255, 1.0, 1.7, np.nan], dtype=np.float32)
    assert float_to_uint8(values).tolist() == [0, 0, 0, 1, 128, 254, 255, 255, 0]


def test_float_to_uint8_returns_uint8() -> None:
    assert float_to_uint8(np.zeros((2, 2), dtype=np.float64)).dtype == np.uint8


def test_channels_last_float_frames_become_uint8() -> None:
    frames = np.full((3, 4, 5, 3), 0.5, dtype=np.float32)
    converted = to_uint8_frames(frames)
    assert converted.shape == (3, 4, 5, 3)
    assert converted.dtype == np.uint8
    assert (converted == 128).all()


def test_channels_first_frames_are_transposed() -> None:
    expected = _frames()
    converted = to_uint8_frames(np.ascontiguousarray(expected.transpose(0, 3, 1, 2)))
    np.testing.assert_array_equal(converted, expected)
    assert converted.flags.c_contiguous


def test_single_frame_gains_a_batch_axis() -> None:
    frame = _frames(1)[0]
    np.testing.assert_array_equal(to_uint8_frames(frame), frame[None])
    np.testing.assert_array_equal(to_uint8_frames(np.ascontiguousarray(frame.transpose(2, 0, 1))), frame[None])


def test_pil_images_become_rgb_frames() -> None:
    expected = _frames()
    images = [Image.fromarray(frame) for frame in expected]
    np.testing.assert_array_equal(to_uint8_frames(images), expected)
    np.testing.assert_array_equal(to_uint8_frames(images[0]), expected[:1])
    rgba = Image.new("RGBA", (5, 4), (10, 20, 30, 40))
    assert to_uint8_frames(rgba)[0, 0, 0].tolist() == [10, 20, 30]


def test_to_pil_frames_round_trips() -> None:
    expected = _frames()
    images = to_pil_frames(expected)
    assert [image.mode for image in images] == ["RGB", "RGB"]
    assert images[0].size == (5, 4)
    np.testing.assert_array_equal(to_uint8_frames(images), expected)


@pytest.mark.parametrize(
    ("frames", "message"),
    [
        (np.zeros((4, 5), dtype=np.uint8), "3-D or 4-D"),
        (np.zeros((2, 4, 5, 2), dtype=np.uint8), "3 channels"),
        (np.zeros((2, 4, 5, 3), dtype=np.int32), "uint8"),
        (np.zeros((0, 4, 5, 3), dtype=np.uint8), "no frames"),
        ([], "no frames"),
        ("frames", "cannot read"),
    ],
)
def test_bad_frames_are_refused(frames: object, message: str) -> None:
    with pytest.raises(FrameFormatError, match=message):
        to_uint8_frames(frames)


def test_tensor_frames_are_quantised_like_arrays() -> None:
    import torch
    values = np.random.default_rng(3).uniform(-0.2, 1.2, size=(2, 3, 4, 5)).astype(np.float32)
    converted = to_uint8_frames(torch.from_numpy(values))
    np.testing.assert_array_equal(converted, float_to_uint8(values.transpose(0, 2, 3, 1)))
    np.testing.assert_array_equal(
        tensor_to_uint8_frames(torch.from_numpy(values).permute(0, 2, 3, 1)), converted
    )
    with pytest.raises(FrameFormatError, match="uint8"):
        tensor_to_uint8_frames(torch.zeros((1, 3, 2, 2), dtype=torch.int64))


def test_png_text_round_trips_losslessly() -> None:
    frame = _frames(1, height=6, width=7)[0]
    text = encode_png(frame)
    assert isinstance(text, str)
    decoded = decode_png(text, width=7, height=6)
    np.testing.assert_array_equal(decoded, frame)
    assert decoded.flags.writeable


def _png_text(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("not base64!", "base64"),
        (base64.b64encode(b"GIF89a....").decode("ascii"), "not a PNG"),
        (_png_text(Image.new("RGB", (8, 6))), "8x6 RGB PNG, expected 7x6"),
        (_png_text(Image.new("L", (7, 6))), "L PNG"),
        (_png_text(Image.new("RGB", (7, 6)))[:60], "corrupt|base64"),
        (42, "base64 text"),
    ],
)
def test_bad_png_text_is_refused(text: object, message: str) -> None:
    with pytest.raises(FrameFormatError, match=message):
        decode_png(text, width=7, height=6)  # type: ignore[arg-type]


def test_encode_png_wants_one_uint8_rgb_frame() -> None:
    with pytest.raises(FrameFormatError, match="uint8"):
        encode_png(np.zeros((4, 4, 3), dtype=np.float32))
    with pytest.raises(FrameFormatError, match=r"\(H, W, 3\)"):
        encode_png(np.zeros((1, 4, 4, 3), dtype=np.uint8))
