"""A procedural backend: prompt-dependent frames, continuous across segments, cheap on a CPU.

The look of a segment (background gradient, shape colours, sizes and kinds, caption) follows from
the prompt and seed through a stable hash; the motion (shape positions and velocities, in fixed
slots) travels in the continuation state, so a prompt change recolours the scene without a jump.
Like a diffusion model it runs every step first and only then has frames, which it hands over one by
one as they are rendered; each carries a marker with its segment, frame number and prompt tag.
With ``audio`` on (the default) every frame comes with its sound: a prompt-dependent tone with sync
clicks (gpu/synthetic_audio.py), whose phase travels in the state too.
"""

from __future__ import annotations

import colorsys
import hashlib
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from gpu.audio import AudioFormat, frame_sample_offset
from gpu.frame_marker import FrameMarker, draw_marker, marker_region, prompt_tag
from gpu.generator import (
    MAX_FRAME_EDGE_PX,
    MAX_STATE_COUNTER,
    ContinuationState,
    FrameCallback,
    GeneratorError,
    IncompatibleStateError,
    SegmentRequest,
    SegmentResult,
    StepCallback,
    check_segment_limits,
    is_finite_number,
    is_state_counter,
    quote_state_value,
)
from gpu.synthetic_audio import SYNTHETIC_AUDIO_FORMAT, render_tone

__all__ = ["STATE_KIND", "SyntheticGenerator"]

STATE_KIND = "synthetic.v1"
DEFAULT_SHAPES = 6
MAX_SHAPES = 64

SHAPE_KINDS = ("circle", "square", "diamond", "ring")
SHAPE_SIZE_RANGE = (0.08, 0.24)  # shape edge as a fraction of the play area's shorter side
SPEED_RANGE = (0.004, 0.016)  # play-area fractions per frame
RING_INNER_RATIO = 0.6
GRADIENT_LEVELS = 256  # palette entries in a background gradient

CAPTION_FONT_PX_RANGE = (10, 28)
CAPTION_FONT_PX_PER_FRAME_PX = 1 / 24  # font size relative to frame height
CAPTION_BACKGROUND = (16, 16, 16)
CAPTION_TEXT = (240, 240, 240)
ELLIPSIS = "\u2026"

INIT_IMAGE_WEIGHT_MAX = 230  # of 256: how strongly the init image shows at frame 0
_FIXED_ONE = 256  # fixed-point unit for blending

_PAYLOAD_KEYS = ("segment_idx", "frame_number", "shapes")
_TONE_PHASE_KEY = "tone_phase"  # optional: states written before the backend had sound lack it
_MOTION_FIELDS = 4  # x, y, vx, vy per shape slot


@dataclass(frozen=True)
class _Sprite:
    mask: np.ndarray  # (size, size) bool
    colour: np.ndarray  # (3,) uint8


@dataclass(frozen=True)
class _Look:
    """Everything that depends on prompt, seed and size only; built once, reused per frame."""

    background: np.ndarray  # (play_h, W, 3) uint8
    caption: np.ndarray | None  # (H - play_h, W, 3) uint8
    sprites: tuple[_Sprite, ...]


@dataclass(frozen=True)
class _Cursor:
    segment_idx: int
    frame_number: int
    motion: np.ndarray  # (shapes, 4) float64: x, y in [0, 1], vx, vy per frame
    tone_phase: float = 0.0  # cycles, [0, 1)


def _rng(*parts: object) -> np.random.Generator:
    """A generator seeded by a stable hash of ``parts`` (never Python's salted ``hash()``)."""
    digest = hashlib.blake2b(repr(parts).encode("utf-8"), digest_size=16).digest()
    return np.random.default_rng(int.from_bytes(digest, "little"))


def _hsv(hue: float, saturation: float, value: float) -> np.ndarray:
    return np.array(
        [round(c * 255) for c in colorsys.hsv_to_rgb(hue % 1.0, saturation, value)], dtype=np.float32
    )


def _background(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    hue = float(rng.random())
    start = _hsv(hue, rng.uniform(0.55, 0.95), rng.uniform(0.35, 0.6))
    end = _hsv(hue + rng.uniform(0.25, 0.5), rng.uniform(0.55, 0.95), rng.uniform(0.7, 0.95))
    levels = np.linspace(0.0, 1.0, GRADIENT_LEVELS, dtype=np.float32)[:, None]
    palette = np.clip(start + (end - start) * levels + 0.5, 0, 255).astype(np.uint8)
    ys = np.linspace(0.0, GRADIENT_LEVELS - 1, height, dtype=np.float32)[:, None]
    xs = np.linspace(0.0, GRADIENT_LEVELS - 1, width, dtype=np.float32)[None, :]
    style = int(rng.integers(4))
    # Index a small palette rather than doing float maths on every pixel and channel.
    if style == 0:
        return np.ascontiguousarray(np.broadcast_to(palette[xs.astype(np.uint8)], (height, width, 3)))
    if style == 1:
        return np.ascontiguousarray(np.broadcast_to(palette[ys.astype(np.uint8)], (height, width, 3)))
    if style == 2:
        ramp = (xs + ys) * 0.5
    else:
        half = (GRADIENT_LEVELS - 1) / 2
        ramp = np.minimum(np.sqrt((xs - half) ** 2 + (ys - half) ** 2) * math.sqrt(2), GRADIENT_LEVELS - 1)
    return np.take(palette, ramp.astype(np.uint8), axis=0)


def _mask(kind: str, size: int) -> np.ndarray:
    centre = (size - 1) / 2
    offsets = np.arange(size, dtype=np.float32) - centre
    dx, dy = offsets[None, :], offsets[:, None]
    radius = size / 2
    if kind == "square":
        return np.ones((size, size), dtype=bool)
    if kind == "diamond":
        return np.asarray(np.abs(dx) + np.abs(dy) <= radius)
    dist2 = dx * dx + dy * dy
    if kind == "ring":
        return np.asarray((dist2 <= radius * radius) & (dist2 >= (RING_INNER_RATIO * radius) ** 2))
    return np.asarray(dist2 <= radius * radius)


def _sprites(rng: np.random.Generator, count: int, play_w: int, play_h: int) -> tuple[_Sprite, ...]:
    short_side = min(play_w, play_h)
    sprites = []
    for _ in range(count):
        kind = SHAPE_KINDS[int(rng.integers(len(SHAPE_KINDS)))]
        size = max(3, round(short_side * rng.uniform(*SHAPE_SIZE_RANGE)))
        colour = _hsv(float(rng.random()), rng.uniform(0.5, 1.0), rng.uniform(0.75, 1.0)).astype(np.uint8)
        sprites.append(_Sprite(mask=_mask(kind, size), colour=colour))
    return tuple(sprites)


def _fit_caption(text: str, font: ImageFont.FreeTypeFont | ImageFont.ImageFont, max_px: float) -> str:
    if font.getlength(text) <= max_px:
        return text
    low, high = 0, len(text)  # the longest prefix that fits with an ellipsis, by bisection
    while low < high:
        mid = (low + high + 1) // 2
        if font.getlength(text[:mid].rstrip() + ELLIPSIS) <= max_px:
            low = mid
        else:
            high = mid - 1
    return text[:low].rstrip() + ELLIPSIS


def _caption_font_px(height: int) -> int:
    low, high = CAPTION_FONT_PX_RANGE
    return max(low, min(high, round(height * CAPTION_FONT_PX_PER_FRAME_PX)))


def _caption(prompt: str, width: int, band_h: int, font_px: int) -> np.ndarray:
    font = ImageFont.load_default(size=font_px)
    pad = (band_h - font_px) // 2
    text = _fit_caption(" ".join(prompt.split()), font, width - 2 * pad)
    image = Image.new("RGB", (width, band_h), CAPTION_BACKGROUND)
    ImageDraw.Draw(image).text((pad, band_h / 2), text, font=font, fill=CAPTION_TEXT, anchor="lm")
    return np.asarray(image, dtype=np.uint8).copy()


def _caption_band_px(width: int, height: int) -> int:
    """Height of the caption band, or 0 where it would reach the marker."""
    font_px = _caption_font_px(height)
    band_h = font_px + 2 * max(2, font_px // 4)
    _, marker_h = marker_region(width, height)
    return band_h if height - band_h >= marker_h else 0


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_STATE_COUNTER



def _advance(motion: np.ndarray) -> None:
    """One frame of motion in place: move, then bounce off the edges of the unit square."""
    pos, vel = motion[:, :2], motion[:, 2:]
    pos += vel
    low, high = pos < 0.0, pos > 1.0
    pos[low] = -pos[low]
    pos[high] = 2.0 - pos[high]
    vel[low | high] *= -1.0
    np.clip(pos, 0.0, 1.0, out=pos)


class SyntheticGenerator:
    """Procedural frames from prompt and seed: moving shapes on a gradient, a caption, a marker.

    ``step_delay_s`` and ``frame_delay_s`` stand in for a model's time per denoising step and per
    decoded frame (load tests, and tests that need a segment to take a while). ``audio`` gives every
    frame its sound (48 kHz mono).
    """

    def __init__(
        self,
        *,
        step_delay_s: float = 0.0,
        frame_delay_s: float = 0.0,
        fail_on_start: bool = False,
        shapes: int = DEFAULT_SHAPES,
        audio: bool = True,
    ) -> None:
        for option, delay in (("step_delay_s", step_delay_s), ("frame_delay_s", frame_delay_s)):
            if not is_finite_number(delay) or delay < 0:
                raise ValueError(f"{option} must be a non-negative number, got {delay!r}")
        if not _is_count(shapes) or not 1 <= shapes <= MAX_SHAPES:
            raise ValueError(f"shapes must be an int in 1..{MAX_SHAPES}, got {shapes!r}")
        if not isinstance(audio, bool):
            raise TypeError(f"audio must be true or false, got {audio!r}")
        if fail_on_start:
            raise GeneratorError("synthetic generator configured to fail on start (fail_on_start=True)")
        self._step_delay_s = float(step_delay_s)
        self._frame_delay_s = float(frame_delay_s)
        self._shapes = shapes
        self._audio_format = SYNTHETIC_AUDIO_FORMAT if audio else None
        self._closed = False
        # The last look built, keyed by what it depends on; a tuple swap is atomic across threads.
        self._look_cache: tuple[tuple[object, ...], _Look] | None = None

    @property
    def name(self) -> str:
        return "synthetic"

    @property
    def audio_format(self) -> AudioFormat | None:
        return self._audio_format

    def close(self) -> None:
        self._closed = True

    def generate(
        self,
        request: SegmentRequest,
        on_step: StepCallback | None = None,
        on_frames: FrameCallback | None = None,
    ) -> SegmentResult:
        """Run the steps, then render the frames, handing each to ``on_frames`` as soon as it exists.

        The order is a diffusion model's: every ``on_step`` comes before the first frame.
        """
        if self._closed:
            raise GeneratorError("synthetic generator is closed")
        self._check_request(request)
        cursor = self._cursor(request)
        look = self._look(request)
        init_image = self._init_image(request) if request.continuation is None else None
        total = request.num_inference_steps
        for step in range(1, total + 1):
            if self._step_delay_s:
                time.sleep(self._step_delay_s)
            if on_step is not None:
                on_step(step, total)
        frames = np.empty((request.num_frames, request.height, request.width, 3), dtype=np.uint8)
        audio, next_phase = self._sound(request, cursor)
        motion = cursor.motion.copy()
        tag = prompt_tag(request.prompt)
        for index in range(request.num_frames):
            if self._frame_delay_s:
                time.sleep(self._frame_delay_s)
            self._render(frames[index], look, motion, init_image, index, request.num_frames)
            draw_marker(frames[index], FrameMarker(cursor.segment_idx, cursor.frame_number + index, tag))
            _advance(motion)
            if on_frames is not None:
                on_frames(frames[index : index + 1], self._frame_audio(audio, index, request.fps))
        state = self._next_state(cursor, motion, request.num_frames, next_phase)
        return SegmentResult(frames=frames, continuation=state, audio=audio)

    def _sound(self, request: SegmentRequest, cursor: _Cursor) -> tuple[np.ndarray | None, float]:
        if self._audio_format is None:
            return None, cursor.tone_phase
        tone = render_tone(
            prompt=request.prompt,
            seed=request.seed,
            phase=cursor.tone_phase,
            first_frame_number=cursor.frame_number,
            num_frames=request.num_frames,
            fps=request.fps,
            audio_format=self._audio_format,
        )
        return tone.pcm, tone.next_phase

    def _frame_audio(self, audio: np.ndarray | None, index: int, fps: int) -> np.ndarray | None:
        if audio is None or self._audio_format is None:
            return None
        rate = self._audio_format.sample_rate
        return audio[frame_sample_offset(index, fps, rate) : frame_sample_offset(index + 1, fps, rate)]

    def check_state(self, state: ContinuationState) -> None:
        """Raise IncompatibleStateError unless ``state`` is a well-formed synthetic.v1 state."""
        self._parse_state(state)

    def _check_request(self, request: SegmentRequest) -> None:
        region_w, region_h = marker_region(request.width, request.height)
        if not (
            region_w <= request.width <= MAX_FRAME_EDGE_PX and region_h <= request.height <= MAX_FRAME_EDGE_PX
        ):
            raise GeneratorError(
                f"frame size {request.width}x{request.height} outside {region_w}x{region_h}"
                f"..{MAX_FRAME_EDGE_PX}x{MAX_FRAME_EDGE_PX}"
            )
        check_segment_limits(request)

    def _cursor(self, request: SegmentRequest) -> _Cursor:
        if request.continuation is not None:
            return self._parse_state(request.continuation)
        rng = _rng("motion", request.seed, request.prompt)
        positions = rng.uniform(0.1, 0.9, size=(self._shapes, 2))
        angles = rng.uniform(0.0, 2 * math.pi, size=self._shapes)
        speeds = rng.uniform(*SPEED_RANGE, size=self._shapes)
        velocities = np.stack([np.cos(angles) * speeds, np.sin(angles) * speeds], axis=1)
        return _Cursor(request.segment_idx, 0, np.concatenate([positions, velocities], axis=1))

    def _parse_state(self, state: ContinuationState) -> _Cursor:
        if state.kind != STATE_KIND:
            raise IncompatibleStateError(
                f"synthetic generator cannot continue from a {state.kind!r} state (expects {STATE_KIND!r})"
            )
        payload = state.payload
        if not isinstance(payload, Mapping) or any(key not in payload for key in _PAYLOAD_KEYS):
            raise IncompatibleStateError(
                f"{STATE_KIND} payload must be an object with keys {list(_PAYLOAD_KEYS)}"
            )
        segment_idx, frame_number = payload["segment_idx"], payload["frame_number"]
        if not is_state_counter(segment_idx) or not is_state_counter(frame_number):
            raise IncompatibleStateError(
                f"{STATE_KIND} payload needs segment_idx and frame_number as ints in 0..{MAX_STATE_COUNTER}, "
                f"got {quote_state_value(segment_idx)} and {quote_state_value(frame_number)}"
            )
        phase = payload.get(_TONE_PHASE_KEY, 0.0)
        if not is_finite_number(phase) or not 0.0 <= phase < 1.0:
            raise IncompatibleStateError(
                f"{STATE_KIND} {_TONE_PHASE_KEY} must be a number in [0, 1), got {quote_state_value(phase)}"
            )
        return _Cursor(segment_idx, frame_number, self._parse_shapes(payload["shapes"]), float(phase))

    def _parse_shapes(self, shapes: object) -> np.ndarray:
        if (
            not isinstance(shapes, Sequence)
            or isinstance(shapes, (str, bytes))
            or len(shapes) != self._shapes
        ):
            raise IncompatibleStateError(
                f"{STATE_KIND} payload needs 'shapes' as a list of {self._shapes} slots"
            )
        for slot in shapes:
            if (
                not isinstance(slot, Sequence)
                or len(slot) != _MOTION_FIELDS
                or not all(is_finite_number(value) for value in slot)
            ):
                raise IncompatibleStateError(
                    f"{STATE_KIND} shape slot must be 4 finite numbers [x, y, vx, vy], got {quote_state_value(slot)}"
                )
        motion = np.array(shapes, dtype=np.float64)
        if np.any(motion[:, :2] < 0.0) or np.any(motion[:, :2] > 1.0) or np.any(np.abs(motion[:, 2:]) > 1.0):
            raise IncompatibleStateError(
                f"{STATE_KIND} shape positions must lie in [0, 1] and speeds within 1 per frame"
            )
        return motion

    def _next_state(self, cursor: _Cursor, motion: np.ndarray, num_frames: int, tone_phase: float) -> ContinuationState:
        payload: dict[str, Any] = {
            "segment_idx": cursor.segment_idx + 1,
            "frame_number": cursor.frame_number + num_frames,
            "shapes": [[float(value) for value in slot] for slot in motion],
            _TONE_PHASE_KEY: tone_phase,
        }
        return ContinuationState(kind=STATE_KIND, payload=payload)

    def _look(self, request: SegmentRequest) -> _Look:
        key: tuple[object, ...] = (request.prompt, request.seed, request.width, request.height, self._shapes)
        cached = self._look_cache
        if cached is not None and cached[0] == key:
            return cached[1]
        band_h = _caption_band_px(request.width, request.height)
        play_h = request.height - band_h
        rng = _rng("look", request.seed, request.prompt)
        look = _Look(
            background=_background(rng, request.width, play_h),
            caption=_caption(request.prompt, request.width, band_h, _caption_font_px(request.height))
            if band_h
            else None,
            sprites=_sprites(rng, self._shapes, request.width, play_h),
        )
        self._look_cache = (key, look)
        return look

    def _init_image(self, request: SegmentRequest) -> np.ndarray | None:
        if request.init_image_path is None:
            return None
        try:
            with Image.open(request.init_image_path) as image:
                resized = image.convert("RGB").resize(
                    (request.width, request.height), Image.Resampling.BILINEAR
                )
        except (OSError, ValueError, Image.DecompressionBombError) as exc:
            raise GeneratorError(f"cannot load init image {request.init_image_path!r}: {exc}") from exc
        return np.asarray(resized, dtype=np.uint16)

    def _render(
        self,
        frame: np.ndarray,
        look: _Look,
        motion: np.ndarray,
        init_image: np.ndarray | None,
        index: int,
        num_frames: int,
    ) -> None:
        play_h, width = look.background.shape[:2]
        play = frame[:play_h]
        np.copyto(play, look.background)
        for sprite, (x, y) in zip(look.sprites, motion[:, :2], strict=True):
            _blit(play, sprite, x * (width - 1), y * (play_h - 1))
        if init_image is not None:
            weight = round(INIT_IMAGE_WEIGHT_MAX * (1 - index / num_frames))
            if weight > 0:
                _blend(play, init_image[:play_h], weight)
        if look.caption is not None:
            frame[play_h:] = look.caption


def _blit(canvas: np.ndarray, sprite: _Sprite, centre_x: float, centre_y: float) -> None:
    """Paint ``sprite`` centred at the given pixel, clipped to ``canvas``, touching its bounding box only."""
    size = sprite.mask.shape[0]
    left, top = round(centre_x - size / 2), round(centre_y - size / 2)
    x0, y0 = max(left, 0), max(top, 0)
    x1, y1 = min(left + size, canvas.shape[1]), min(top + size, canvas.shape[0])
    if x0 >= x1 or y0 >= y1:
        return
    mask = sprite.mask[y0 - top : y1 - top, x0 - left : x1 - left]
    canvas[y0:y1, x0:x1][mask] = sprite.colour


def _blend(canvas: np.ndarray, image: np.ndarray, weight: int) -> None:
    """``canvas = image * w + canvas * (1 - w)`` in fixed point, ``weight`` of ``_FIXED_ONE``."""
    mixed = image * np.uint16(weight) + canvas.astype(np.uint16) * np.uint16(_FIXED_ONE - weight)
    np.right_shift(mixed, 8, out=mixed)
    canvas[...] = mixed
