"""Frame conversions between model outputs, PIL images, uint8 RGB arrays and PNG text.

Frames leave this module as C-contiguous ``uint8`` arrays of shape ``(N, H, W, 3)`` in RGB order
(see gpu/generator.py). Pure numpy and Pillow: torch is touched only when a tensor is passed in,
and then through the tensor's own methods, so importing this module never imports torch.
"""

from __future__ import annotations

import base64
import binascii
import io
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

if TYPE_CHECKING:
    import torch

__all__ = [
    "FrameFormatError",
    "decode_png",
    "encode_png",
    "float_to_uint8",
    "tensor_to_uint8_frames",
    "to_pil_frames",
    "to_uint8_frames",
]

RGB_CHANNELS = 3
UINT8_MAX = 255
PNG_COMPRESS_LEVEL = 1  # zlib level: 1 is several times faster than the default 6 for ~10% more bytes
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class FrameFormatError(ValueError):
    """Frames or encoded frames of an unexpected shape, type or content."""


def float_to_uint8(values: np.ndarray) -> np.ndarray:
    """Map floats in ``[0, 1]`` to ``0..255``: round to nearest (ties to even), clip, NaN to 0."""
    scaled = np.nan_to_num(np.asarray(values, dtype=np.float32), nan=0.0) * np.float32(UINT8_MAX)
    np.clip(scaled, 0, UINT8_MAX, out=scaled)
    np.rint(scaled, out=scaled)
    quantised: np.ndarray = scaled.astype(np.uint8)
    return quantised


def _channels_last(array: np.ndarray) -> np.ndarray:
    """``(N, H, W, 3)`` from a 3-D frame or a 4-D batch in either channel layout (channels-last wins ties)."""
    if array.ndim == 3:
        array = array[None]
    if array.ndim != 4:
        raise FrameFormatError(f"frames must be 3-D or 4-D, got shape {array.shape}")
    if array.shape[-1] == RGB_CHANNELS:
        return array
    if array.shape[1] == RGB_CHANNELS:
        return array.transpose(0, 2, 3, 1)
    raise FrameFormatError(f"frames need 3 channels first or last, got shape {array.shape}")


def to_uint8_frames(frames: Any) -> np.ndarray:
    """``(N, H, W, 3)`` uint8 RGB from PIL image(s), numpy arrays or a torch tensor.

    Arrays may be ``(H, W, 3)``, ``(3, H, W)``, ``(N, H, W, 3)`` or ``(N, 3, H, W)``; floats are read as
    ``[0, 1]`` and rounded, integers must already be ``uint8``.
    """
    if _is_tensor(frames):
        return tensor_to_uint8_frames(frames)
    if isinstance(frames, Image.Image):
        frames = [frames]
    if isinstance(frames, Sequence) and not isinstance(frames, (str, bytes)):
        if not frames:
            raise FrameFormatError("no frames given")
        if all(isinstance(frame, Image.Image) for frame in frames):
            return np.stack([np.asarray(frame.convert("RGB")) for frame in frames])
        frames = np.stack([np.asarray(frame) for frame in frames])
    if not isinstance(frames, np.ndarray):
        raise FrameFormatError(f"cannot read frames from {type(frames).__name__}")
    array = _channels_last(frames)
    if array.shape[0] == 0:
        raise FrameFormatError("no frames given")
    if np.issubdtype(array.dtype, np.floating):
        return float_to_uint8(array)
    if array.dtype != np.uint8:
        raise FrameFormatError(f"integer frames must be uint8, got {array.dtype}")
    return np.ascontiguousarray(array)


def tensor_to_uint8_frames(video: torch.Tensor) -> np.ndarray:
    """``(N, H, W, 3)`` uint8 from a float tensor in ``[0, 1]``, ``(N, 3, H, W)`` or ``(N, H, W, 3)``.

    Quantises where the tensor lives (on the GPU, a quarter of the bytes then cross to the host).
    """
    import torch  # already imported by whoever made the tensor

    if video.ndim == 3:
        video = video.unsqueeze(0)
    if video.ndim != 4:
        raise FrameFormatError(f"frames must be 3-D or 4-D, got shape {tuple(video.shape)}")
    if video.shape[-1] != RGB_CHANNELS:
        if video.shape[1] != RGB_CHANNELS:
            raise FrameFormatError(f"frames need 3 channels first or last, got shape {tuple(video.shape)}")
        video = video.permute(0, 2, 3, 1)
    if video.shape[0] == 0:
        raise FrameFormatError("no frames given")
    if video.dtype == torch.uint8:
        quantised = video
    elif video.is_floating_point():
        scaled = torch.nan_to_num(video.detach().float(), nan=0.0) * UINT8_MAX
        quantised = scaled.clamp_(0, UINT8_MAX).round_().to(torch.uint8)
    else:
        raise FrameFormatError(f"integer frames must be uint8, got {video.dtype}")
    return np.ascontiguousarray(quantised.cpu().numpy())


def to_pil_frames(frames: np.ndarray) -> list[Image.Image]:
    """One RGB PIL image per frame of a ``(N, H, W, 3)`` uint8 array."""
    array = to_uint8_frames(frames)
    return [Image.fromarray(frame) for frame in array]  # (H, W, 3) uint8 is read as RGB


def encode_png(frame: np.ndarray) -> str:
    """One ``(H, W, 3)`` uint8 RGB frame as base64 PNG text (lossless)."""
    if frame.ndim != 3 or frame.shape[-1] != RGB_CHANNELS or frame.dtype != np.uint8:
        raise FrameFormatError(f"a PNG frame must be (H, W, 3) uint8, got {frame.shape} {frame.dtype}")
    buffer = io.BytesIO()
    Image.fromarray(frame).save(buffer, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def decode_png(text: str, *, width: int, height: int) -> np.ndarray:
    """The ``(height, width, 3)`` uint8 RGB frame in base64 PNG ``text``; FrameFormatError otherwise.

    The size is checked from the header before any pixel is decoded, so a hostile payload cannot make
    us inflate a huge image.
    """
    if not isinstance(text, str):
        raise FrameFormatError(f"a PNG frame must be base64 text, got {type(text).__name__}")
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise FrameFormatError(f"frame is not valid base64: {exc}") from exc
    if not data.startswith(_PNG_SIGNATURE):
        raise FrameFormatError("frame is not a PNG image")
    try:
        with Image.open(io.BytesIO(data), formats=["PNG"]) as image:
            if image.size != (width, height) or image.mode != "RGB":
                raise FrameFormatError(
                    f"frame is a {image.size[0]}x{image.size[1]} {image.mode} PNG, expected {width}x{height} RGB"
                )
            image.load()
            return np.asarray(image).copy()
    except (OSError, SyntaxError, Image.DecompressionBombError) as exc:  # PIL reports corrupt PNGs so
        raise FrameFormatError(f"frame is a corrupt PNG: {exc}") from exc


def _is_tensor(value: object) -> bool:
    return type(value).__module__.split(".", 1)[0] == "torch" and hasattr(value, "detach")
