"""The ``ltx2.v1`` continuation state: the last K frames and the audio latents under them, as plain JSON.

::

    {"segment_idx": 3,                 # index of the next segment
     "frame_number": 336,              # frames streamed so far
     "fps": 24,                        # frame rate the audio latents were timed at
     "conditioning_frames": 9,         # K: how many frames are in "frames" (8n + 1)
     "width": 1280, "height": 704,
     "frames": ["iVBORw0KGgo...", ...],            # the last K frames, oldest first, base64 PNG each
     "audio_latents": {"shape": [8, 9, 16],        # [channels, latent frames, latent mel bins]
                       "dtype": "float32",         # little-endian
                       "data": "AACAPwAA..."}}     # base64 of the raw array

The audio latents are the denoised (not normalised) latents of the audio under those K frames, in
the layout the pipeline takes as ``audio_latents``. The two large parts, ``frames`` and
``audio_latents``, are top-level keys: the session store moves any top-level part whose JSON is
larger than ``store.inline_limit_bytes`` to its blob store. (With LTX-2's 25 latent frames per second,
8 channels and 16 mel bins, K = 9 frames at 24 fps is about 5 KB of latents, 7 KB in base64: inline
under the 64 KiB default; longer contexts go to blobs like the frames.)

Pure numpy and PNG; no torch.
"""

from __future__ import annotations

import base64
import binascii
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from gpu.diffusers_runtime import state_payload
from gpu.frames import FrameFormatError, decode_png, encode_png
from gpu.generator import (
    MAX_FRAME_EDGE_PX,
    MAX_FRAMES_PER_SEGMENT,
    ContinuationState,
    IncompatibleStateError,
    quote_state_value,
)

__all__ = [
    "MAX_AUDIO_LATENT_FRAMES",
    "STATE_KIND",
    "Ltx2Cursor",
    "decode_latents",
    "encode_latents",
    "encode_state",
    "parse_state",
]

STATE_KIND = "ltx2.v1"
MAX_AUDIO_LATENT_FRAMES = 25 * 60  # a minute of LTX-2 audio latents; far beyond any K frames
MAX_AUDIO_LATENT_WIDTH = 1024  # channels or mel bins
_DTYPES: dict[str, np.dtype[Any]] = {"float32": np.dtype("<f4"), "float16": np.dtype("<f2")}
_PAYLOAD_KEYS = (
    "segment_idx", "frame_number", "fps", "conditioning_frames", "width", "height", "frames", "audio_latents",
)
_MAX_FPS = 240


@dataclass(frozen=True)
class Ltx2Cursor:
    """Where an LTX-2 stream stands before a segment."""

    segment_idx: int
    frame_number: int
    frames: np.ndarray | None = None  # (K, H, W, 3) uint8, oldest first; None for a fresh stream
    audio_latents: np.ndarray | None = None  # (C, L, M) float32 under those frames
    fps: int | None = None  # the rate the audio latents were timed at


def encode_latents(latents: np.ndarray) -> dict[str, Any]:
    """A float array as ``{"shape", "dtype", "data"}`` (float32, little-endian, base64)."""
    array = np.ascontiguousarray(latents, dtype=_DTYPES["float32"])
    return {
        "shape": [int(size) for size in array.shape],
        "dtype": "float32",
        "data": base64.b64encode(array.tobytes()).decode("ascii"),
    }


def decode_latents(value: object) -> np.ndarray:
    """The float32 array an ``encode_latents`` object holds; IncompatibleStateError naming what is wrong."""
    where = f"{STATE_KIND} audio_latents"
    if not isinstance(value, Mapping) or set(value) != {"shape", "dtype", "data"}:
        raise IncompatibleStateError(f"{where} must be an object with keys shape, dtype and data")
    shape, dtype, data = value["shape"], value["dtype"], value["data"]
    if (
        not isinstance(shape, list)
        or len(shape) != 3
        or not all(isinstance(size, int) and not isinstance(size, bool) for size in shape)
        or not (1 <= shape[0] <= MAX_AUDIO_LATENT_WIDTH and 1 <= shape[1] <= MAX_AUDIO_LATENT_FRAMES)
        or not 1 <= shape[2] <= MAX_AUDIO_LATENT_WIDTH
    ):
        raise IncompatibleStateError(
            f"{where} shape must be [channels, frames, mel bins] up to "
            f"[{MAX_AUDIO_LATENT_WIDTH}, {MAX_AUDIO_LATENT_FRAMES}, {MAX_AUDIO_LATENT_WIDTH}], "
            f"got {quote_state_value(shape)}"
        )
    if dtype not in _DTYPES:
        raise IncompatibleStateError(f"{where} dtype must be one of {sorted(_DTYPES)}, got {quote_state_value(dtype)}")
    if not isinstance(data, str):
        raise IncompatibleStateError(f"{where} data must be a base64 string")
    expected = math.prod(shape) * _DTYPES[dtype].itemsize
    if len(data) > 4 * (expected + 2) // 3 + 4:  # never decode more than the shape can hold
        raise IncompatibleStateError(f"{where} data is longer than shape {shape} of {dtype} needs")
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise IncompatibleStateError(f"{where} data is not valid base64: {exc}") from exc
    if len(raw) != expected:
        raise IncompatibleStateError(f"{where} data holds {len(raw)} bytes; shape {shape} of {dtype} needs {expected}")
    array = np.frombuffer(raw, dtype=_DTYPES[dtype]).reshape(shape).astype(np.float32)
    if not np.isfinite(array).all():
        raise IncompatibleStateError(f"{where} holds NaN or infinite values")
    return array


def encode_state(
    *,
    segment_idx: int,
    frame_number: int,
    fps: int,
    frames: np.ndarray,
    audio_latents: np.ndarray,
) -> ContinuationState:
    """The ``ltx2.v1`` state holding ``frames`` (the last K, ``(K, H, W, 3)`` uint8) and their audio latents."""
    payload: dict[str, Any] = {
        "segment_idx": segment_idx,
        "frame_number": frame_number,
        "fps": fps,
        "conditioning_frames": int(frames.shape[0]),
        "width": int(frames.shape[2]),
        "height": int(frames.shape[1]),
        "frames": [encode_png(frame) for frame in frames],
        "audio_latents": encode_latents(audio_latents),
    }
    return ContinuationState(kind=STATE_KIND, payload=payload)


def parse_state(
    state: ContinuationState,
    *,
    spatial_ratio: int,
    temporal_ratio: int,
    keep_frames: int,
    audio_shape: tuple[int, int],
) -> Ltx2Cursor:
    """The cursor an ``ltx2.v1`` state describes, checked against the model that continues it.

    Only the last ``keep_frames`` frames (this generator's K, or fewer for a shorter state) are
    decoded. ``audio_shape`` is the model's (latent channels, latent mel bins).
    """
    payload = state_payload(state, kind=STATE_KIND, keys=_PAYLOAD_KEYS, backend="diffusers_ltx2")
    fps = payload["fps"]
    if not isinstance(fps, int) or isinstance(fps, bool) or not 1 <= fps <= _MAX_FPS:
        raise IncompatibleStateError(f"{STATE_KIND} fps must be an int in 1..{_MAX_FPS}, got {quote_state_value(fps)}")
    width, height = payload["width"], payload["height"]
    if not all(_is_edge(edge, spatial_ratio) for edge in (width, height)):
        raise IncompatibleStateError(
            f"{STATE_KIND} width and height must be multiples of {spatial_ratio} up to {MAX_FRAME_EDGE_PX}, "
            f"got {quote_state_value(width)}x{quote_state_value(height)}"
        )
    frames = _parse_frames(payload["conditioning_frames"], payload["frames"], width, height, temporal_ratio, keep_frames)
    latents = decode_latents(payload["audio_latents"])
    if (latents.shape[0], latents.shape[2]) != audio_shape:
        raise IncompatibleStateError(
            f"{STATE_KIND} audio_latents of {latents.shape[0]} channels x {latents.shape[2]} mel bins do not fit "
            f"this model's {audio_shape[0]} x {audio_shape[1]}"
        )
    return Ltx2Cursor(payload["segment_idx"], payload["frame_number"], frames, latents, fps)


def _is_edge(value: object, ratio: int) -> bool:
    if not isinstance(value, int) or isinstance(value, bool):
        return False
    return ratio <= value <= MAX_FRAME_EDGE_PX and value % ratio == 0


def _parse_frames(
    count: object, frames: object, width: int, height: int, temporal_ratio: int, keep_frames: int
) -> np.ndarray:
    if (
        not isinstance(count, int)
        or isinstance(count, bool)
        or not 1 <= count <= MAX_FRAMES_PER_SEGMENT
        or (count - 1) % temporal_ratio
    ):
        raise IncompatibleStateError(
            f"{STATE_KIND} conditioning_frames must be {temporal_ratio}*n+1 up to {MAX_FRAMES_PER_SEGMENT}, "
            f"got {quote_state_value(count)}"
        )
    if not isinstance(frames, Sequence) or isinstance(frames, (str, bytes)) or len(frames) != count:
        raise IncompatibleStateError(f"{STATE_KIND} frames must be a list of {count} base64 PNG frames")
    kept = (min(keep_frames, count) - 1) // temporal_ratio * temporal_ratio + 1
    try:
        decoded = [decode_png(frame, width=width, height=height) for frame in frames[count - kept :]]
    except FrameFormatError as exc:
        raise IncompatibleStateError(f"{STATE_KIND} frames: {exc}") from exc
    return np.stack(decoded)
