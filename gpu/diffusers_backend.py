"""The ``diffusers`` backend: LTX-Video through ``LTXConditionPipeline``, continued segment to segment.

The pipeline is loaded once, with ``from_pretrained``, from a local directory (never the hub). Each
segment is one pipeline call. The first is conditioned on the prompt, and on the initial image at
frame 0 when there is one; every later one on the last K frames of the stream so far, placed at frame
0 as a video condition, so the model re-draws those K frames and carries on from them. The redrawn
frames are dropped and only ``request.num_frames`` new frames are returned.

LTX's VAE compresses time 8x (``temporal_ratio``): a conditioning clip and a generated video must be
``8n + 1`` frames long. A segment with K conditioning and N new frames therefore asks the pipeline for
the shortest valid length of at least K + N frames and keeps frames ``K .. K+N-1``.

The continuation state, kind ``ltx.v1``, is plain JSON::

    {"segment_idx": 3,             # index of the next segment
     "frame_number": 72,           # frames streamed so far
     "conditioning_frames": 9,     # K: how many frames are in "frames" (8n + 1)
     "width": 768, "height": 512,
     "frames": ["iVBORw0KGgo...", ...]}   # the last K frames, oldest first, base64 PNG each

Everything large sits under the one ``frames`` key, which the session store may move to its blob
store. The noise of segment ``i`` is seeded from ``(request.seed, i)``, so a fixed seed is
reproducible without every segment starting from the same noise.

Prompts are encoded once per text (gpu/prompt_embeddings.py) and handed to the pipeline as
embeddings. A distilled checkpoint's fixed schedule is the ``timesteps`` option (fewer steps run a
subset of it, gpu/diffusion_rules.py), with ``image_cond_noise_scale`` and ``guidance_rescale`` as
the model card recommends. LTX-Video makes no sound: ``audio_format`` is None.

torch and diffusers are imported when a generator is built, never at module import, so this module
(and the factory) loads where the ``diffusers`` extra is not installed.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from os import PathLike
from typing import Any

import numpy as np
from PIL import Image

from gpu.audio import AudioFormat
from gpu.diffusers_runtime import (
    CALL_ERRORS,
    LoadedPipeline,
    check_common_options,
    check_model_request,
    check_state_frame_size,
    open_init_image,
    state_payload,
)
from gpu.diffusion_rules import check_schedule, schedule_for_steps
from gpu.frames import (
    FrameFormatError,
    decode_png,
    encode_png,
    tensor_to_uint8_frames,
    to_pil_frames,
)
from gpu.generator import (
    MAX_FRAME_EDGE_PX,
    MAX_FRAMES_PER_SEGMENT,
    ContinuationState,
    FrameCallback,
    GeneratorError,
    IncompatibleStateError,
    SegmentCancelled,
    SegmentRequest,
    SegmentResult,
    StepCallback,
    is_finite_number,
    quote_state_value,
)
from gpu.prompt_embeddings import DEFAULT_PROMPT_CACHE_SIZE

__all__ = [
    "DEFAULT_CONDITIONING_FRAMES",
    "FRAMES_PER_CHUNK",
    "STATE_KIND",
    "DiffusersGenerator",
    "is_valid_length",
    "kept_conditioning_frames",
    "pipeline_num_frames",
    "segment_seed",
    "validate_conditioning_frames",
]

logger = logging.getLogger(__name__)

STATE_KIND = "ltx.v1"
DEFAULT_CONDITIONING_FRAMES = 9  # one latent frame of context beyond the first: 8 * 1 + 1
DEFAULT_DECODE_TIMESTEP = 0.05  # LTX-Video 0.9.5+ recommendations; unused by VAEs without timestep input
DEFAULT_DECODE_NOISE_SCALE = 0.025
DEFAULT_MAX_SEQUENCE_LENGTH = 256  # prompt tokens; the pipeline's own default
DEFAULT_IMAGE_COND_NOISE_SCALE = 0.15  # the pipeline's default; the distilled 0.9.7/0.9.8 cards use 0.0
TIMESTEP_SCALE = 1000  # the pipeline's timesteps are sigmas times this
# Frames converted to uint8 and handed over at a time: the first chunk leaves before the rest of the
# video has been quantised and copied to the host.
FRAMES_PER_CHUNK = 8

_PAYLOAD_KEYS = ("segment_idx", "frame_number", "conditioning_frames", "width", "height", "frames")

_SCHEDULER_LOGGER = "diffusers.schedulers.scheduling_flow_match_euler_discrete"
_SCHEDULER_NOISE = "`timesteps` were passed without `sigmas`"


def is_valid_length(frames: int, temporal_ratio: int) -> bool:
    """Whether a clip of ``frames`` frames suits a VAE compressing time ``temporal_ratio`` times."""
    return frames >= 1 and (frames - 1) % temporal_ratio == 0


def validate_conditioning_frames(frames: object, temporal_ratio: int) -> int:
    """``frames`` if it is a valid conditioning length (``temporal_ratio * n + 1``), else ValueError."""
    if not isinstance(frames, int) or isinstance(frames, bool) or not is_valid_length(frames, temporal_ratio):
        raise ValueError(
            f"conditioning_frames must be {temporal_ratio}*n+1 (1, {temporal_ratio + 1}, "
            f"{2 * temporal_ratio + 1}, ...) for this VAE, got {frames!r}"
        )
    return frames


def kept_conditioning_frames(configured: int, available: int, temporal_ratio: int) -> int:
    """How many trailing frames to keep: the longest valid length within ``configured`` and ``available``.

    A stream shorter than K frames (a first segment of fewer than K frames) keeps what it can.
    """
    if available < 1:
        raise ValueError(f"need at least one frame to continue from, got {available}")
    limit = min(configured, available)
    return (limit - 1) // temporal_ratio * temporal_ratio + 1


def pipeline_num_frames(conditioning: int, new: int, temporal_ratio: int) -> int:
    """The shortest valid video length that holds ``conditioning`` redrawn and ``new`` fresh frames."""
    if conditioning < 0 or new < 1:
        raise ValueError(f"need conditioning >= 0 and new >= 1 frames, got {conditioning} and {new}")
    return math.ceil((conditioning + new - 1) / temporal_ratio) * temporal_ratio + 1


def segment_seed(seed: int, segment_idx: int) -> int:
    """The torch seed for one segment: a stable 63-bit hash of the request seed and the index."""
    digest = hashlib.blake2b(repr((seed, segment_idx)).encode("ascii"), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0



def _is_edge(value: object, ratio: int) -> bool:
    if not isinstance(value, int) or isinstance(value, bool):
        return False
    return ratio <= value <= MAX_FRAME_EDGE_PX and value % ratio == 0


@dataclass(frozen=True)
class _Cursor:
    """Where the stream stands before a segment: its index, frames so far and the frames to continue."""

    segment_idx: int
    frame_number: int
    history: np.ndarray | None  # (K, H, W, 3) uint8, oldest first; None for a fresh stream


class _DropSchedulerNoise(logging.Filter):
    """Drops the scheduler's per-call note that the LTX pipeline passes timesteps and no sigmas.

    LTXConditionPipeline always does (its own schedule), so the note fires on every segment and says
    nothing a caller can act on.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(_SCHEDULER_NOISE)


def _quiet_scheduler_logger() -> None:
    scheduler_logger = logging.getLogger(_SCHEDULER_LOGGER)
    if not any(isinstance(existing, _DropSchedulerNoise) for existing in scheduler_logger.filters):
        scheduler_logger.addFilter(_DropSchedulerNoise())


class _StepReporter:
    """The pipeline's ``callback_on_step_end``: reports 1-based steps to ``on_step``."""

    def __init__(self, on_step: StepCallback | None, total: int) -> None:
        self._on_step = on_step
        self._total = total

    def __call__(self, pipeline: Any, index: int, timestep: Any, tensors: dict[str, Any]) -> dict[str, Any]:
        if self._on_step is not None:
            self._on_step(index + 1, self._total)
        return {}  # nothing replaced: the pipeline keeps its latents


class DiffusersGenerator(LoadedPipeline):
    """LTX-Video segments from a local ``LTXConditionPipeline`` directory, each continuing the last.

    Options (keyword-only):

    - ``model_path``: a diffusers pipeline directory (``model_index.json`` and component folders).
    - ``device``: ``auto`` (CUDA when available), ``cpu``, ``cuda`` or ``cuda:N``.
    - ``dtype``: ``auto`` (bfloat16 on CUDA, float32 on CPU), ``float32``, ``float16`` or ``bfloat16``.
    - ``enable_model_cpu_offload``: keep models on the CPU and move each to the GPU while it runs
      (needs a CUDA device; less memory, slower).
    - ``enable_vae_tiling``: decode in spatial tiles (less memory at large sizes).
    - ``conditioning_frames``: K, frames of the previous segment the next one continues from
      (``8n + 1`` for LTX).
    - ``conditioning_strength``: how hard those frames (and the initial image) hold, in ``(0, 1]``.
    - ``decode_timestep``, ``decode_noise_scale``: VAE decode settings for timestep-aware VAEs.
    - ``max_sequence_length``: prompt tokens given to the text encoder.
    - ``timesteps``: a fixed denoising schedule (0..1000, falling), e.g. the distilled 0.9.7/0.9.8
      ``[1000, 993, 987, 981, 975, 909, 725, 0.03]``; a request for fewer steps runs a subset, more is
      an error. Unset: the pipeline's own schedule for any step count.
    - ``image_cond_noise_scale``: noise added to the conditioning frames (0.0 for the distilled models).
    - ``guidance_rescale``: rescales classifier-free guidance (0.7 on the model cards), 0 turns it off.
    - ``prompt_cache_size``: prompt encodings kept (per text), 0 turns the cache off.

    One segment runs at a time (a pipeline is not thread-safe); concurrent callers wait their turn.
    Bad option values raise ValueError; a directory that cannot be loaded raises GeneratorError
    naming it.
    """

    def __init__(
        self,
        *,
        model_path: str | PathLike[str],
        device: str = "auto",
        dtype: str = "auto",
        enable_model_cpu_offload: bool = False,
        enable_vae_tiling: bool = False,
        conditioning_frames: int = DEFAULT_CONDITIONING_FRAMES,
        conditioning_strength: float = 1.0,
        decode_timestep: float = DEFAULT_DECODE_TIMESTEP,
        decode_noise_scale: float = DEFAULT_DECODE_NOISE_SCALE,
        max_sequence_length: int = DEFAULT_MAX_SEQUENCE_LENGTH,
        timesteps: Sequence[float] | None = None,
        image_cond_noise_scale: float = DEFAULT_IMAGE_COND_NOISE_SCALE,
        guidance_rescale: float = 0.0,
        prompt_cache_size: int = DEFAULT_PROMPT_CACHE_SIZE,
    ) -> None:
        self._path = check_common_options(
            model_path=model_path,
            device=device,
            dtype=dtype,
            conditioning_frames=conditioning_frames,
            conditioning_strength=conditioning_strength,
            max_sequence_length=max_sequence_length,
        )
        for option, value in (
            ("decode_timestep", decode_timestep),
            ("decode_noise_scale", decode_noise_scale),
            ("image_cond_noise_scale", image_cond_noise_scale),
            ("guidance_rescale", guidance_rescale),
        ):
            if not is_finite_number(value) or not 0.0 <= value <= 1.0:
                raise ValueError(f"{option} must be in [0, 1], got {value!r}")
        self._strength = float(conditioning_strength)
        self._decode_timestep = float(decode_timestep)
        self._decode_noise_scale = float(decode_noise_scale)
        self._schedule = check_schedule(timesteps, name="timesteps", high=TIMESTEP_SCALE)
        self._image_cond_noise_scale = float(image_cond_noise_scale)
        self._guidance_rescale = float(guidance_rescale)

        torch, pipeline_class, condition_class = _import_runtime()
        self._condition_class = condition_class
        started = time.perf_counter()
        self._load(
            torch,
            pipeline_class,
            self._path,
            device=device,
            dtype=dtype,
            offload=enable_model_cpu_offload,
            label="LTX",
            prompt_cache_size=prompt_cache_size,
            max_sequence_length=max_sequence_length,
        )
        try:
            self._conditioning_frames = validate_conditioning_frames(conditioning_frames, self._temporal_ratio)
        except ValueError:
            self.close()  # give the device memory back now, not when the half-built object is collected
            raise
        if enable_vae_tiling:
            self._pipeline.vae.enable_tiling()
        self._pipeline.set_progress_bar_config(disable=True)
        _quiet_scheduler_logger()
        logger.info(
            "diffusers: loaded %s on %s as %s in %.1f s (K=%d, %dx spatial, %dx temporal)",
            self._path,
            self._device,
            str(self._dtype).removeprefix("torch."),
            time.perf_counter() - started,
            self._conditioning_frames,
            self._spatial_ratio,
            self._temporal_ratio,
        )

    @property
    def name(self) -> str:
        return "diffusers"

    @property
    def audio_format(self) -> AudioFormat | None:
        """None: LTX-Video makes no sound."""
        return None

    def generate(
        self,
        request: SegmentRequest,
        on_step: StepCallback | None = None,
        on_frames: FrameCallback | None = None,
    ) -> SegmentResult:
        """Generate ``request.num_frames`` new frames, continuing ``request.continuation`` if given.

        The pipeline decodes the whole video at once; the frames then cross to the host in chunks of
        FRAMES_PER_CHUNK, each handed to ``on_frames`` before the next is converted.
        """
        check_model_request(
            request, spatial_ratio=self._spatial_ratio, schedule=self._schedule, schedule_name="timesteps"
        )
        cursor = self._cursor(request)
        check_state_frame_size(STATE_KIND, cursor.history, request)
        init_image = open_init_image(request.init_image_path) if cursor.history is None else None
        with self._running("diffusers") as pipeline:
            video = self._run_pipeline(pipeline, request, cursor, init_image, on_step)
        # Outside the lock: the decoded video no longer needs the pipeline, and a slow receiver
        # must not hold up the next segment's denoising.
        frames = self._hand_over(video, cursor.segment_idx, on_frames)
        return SegmentResult(frames=frames, continuation=self._next_state(cursor, frames))

    def check_state(self, state: ContinuationState) -> None:
        """Raise IncompatibleStateError unless ``state`` is a well-formed ``ltx.v1`` state (decodes its frames)."""
        self._parse_state(state)

    # Loading.

    # Generation.

    def _cursor(self, request: SegmentRequest) -> _Cursor:
        if request.continuation is None:
            return _Cursor(request.segment_idx, 0, None)
        return self._parse_state(request.continuation)

    def _conditions(self, cursor: _Cursor, init_image: Image.Image | None) -> list[Any]:
        if cursor.history is not None:
            video = to_pil_frames(cursor.history)
            return [self._condition_class(video=video, frame_index=0, strength=self._strength)]
        if init_image is not None:
            return [self._condition_class(image=init_image, frame_index=0, strength=self._strength)]
        return []

    def _run_pipeline(
        self,
        pipeline: Any,
        request: SegmentRequest,
        cursor: _Cursor,
        init_image: Image.Image | None,
        on_step: StepCallback | None,
    ) -> Any:
        """The new frames as a ``(N, 3, H, W)`` float tensor in ``[0, 1]``, still on the device."""
        torch = self._torch
        redrawn = 0 if cursor.history is None else cursor.history.shape[0]
        total_frames = pipeline_num_frames(redrawn, request.num_frames, self._temporal_ratio)
        steps = request.num_inference_steps
        conditions = self._conditions(cursor, init_image)
        noise = torch.Generator(device=self._device).manual_seed(segment_seed(request.seed, cursor.segment_idx))
        try:
            embeddings = self._embeddings(pipeline, request)
            output = pipeline(
                conditions=conditions or None,
                **embeddings,
                width=request.width,
                height=request.height,
                num_frames=total_frames,
                frame_rate=request.fps,
                num_inference_steps=steps,
                timesteps=self._timesteps(steps),
                guidance_scale=float(request.guidance_scale),
                guidance_rescale=self._guidance_rescale,
                image_cond_noise_scale=self._image_cond_noise_scale,
                generator=noise,
                decode_timestep=self._decode_timestep,
                decode_noise_scale=self._decode_noise_scale,
                max_sequence_length=self._max_sequence_length,
                output_type="pt",
                callback_on_step_end=_StepReporter(on_step, steps),
            )
        except SegmentCancelled:
            raise  # the caller's own stop signal from on_step, not a pipeline failure
        except CALL_ERRORS as exc:
            raise GeneratorError(
                f"LTX pipeline failed on segment {cursor.segment_idx}: {type(exc).__name__}: {exc}"
            ) from exc
        video = output.frames[0]  # (T, 3, H, W) float in [0, 1], on the device
        return video[redrawn : redrawn + request.num_frames]

    def _hand_over(self, video: Any, segment_idx: int, on_frames: FrameCallback | None) -> np.ndarray:
        """The frames as uint8, converted chunk by chunk, each chunk through ``on_frames`` before the next."""
        count, _, height, width = video.shape
        frames = np.empty((count, height, width, 3), dtype=np.uint8)
        for start in range(0, count, FRAMES_PER_CHUNK):
            stop = min(start + FRAMES_PER_CHUNK, count)
            try:
                frames[start:stop] = tensor_to_uint8_frames(video[start:stop])
            except CALL_ERRORS as exc:
                raise GeneratorError(
                    f"converting the frames of segment {segment_idx} failed: {type(exc).__name__}: {exc}"
                ) from exc
            if on_frames is not None:
                on_frames(frames[start:stop], None)  # outside the try: a receiver's exception is its own
        return frames

    def _embeddings(self, pipeline: Any, request: SegmentRequest) -> dict[str, Any]:
        """The pipeline's prompt arguments as embeddings, each text encoded once (prompt cache)."""
        embeds, mask = self._encode(pipeline, request.prompt)
        arguments: dict[str, Any] = {"prompt_embeds": embeds, "prompt_attention_mask": mask}
        if request.guidance_scale > 1.0:  # the pipeline's own test for classifier-free guidance
            negative, negative_mask = self._encode(pipeline, request.negative_prompt or "")
            arguments.update(negative_prompt_embeds=negative, negative_prompt_attention_mask=negative_mask)
        return arguments

    def _timesteps(self, steps: int) -> list[float]:
        if self._schedule is not None:
            try:
                return schedule_for_steps(self._schedule, steps)
            except ValueError as exc:
                raise GeneratorError(f"num_inference_steps: {exc} (option timesteps)") from exc
        # The pipeline's own default schedule, handed over as a list: given none, the pipeline passes
        # a tensor that the scheduler converts with np.array(), a DeprecationWarning under numpy 2.
        from diffusers.pipelines.ltx.pipeline_ltx_condition import (
            linear_quadratic_schedule,
        )

        schedule: Callable[[int], Any] = linear_quadratic_schedule  # untyped upstream
        return [float(sigma) * TIMESTEP_SCALE for sigma in schedule(steps).tolist()]

    # Continuation state.

    def _next_state(self, cursor: _Cursor, frames: np.ndarray) -> ContinuationState:
        stream = frames if cursor.history is None else np.concatenate([cursor.history, frames])
        kept = kept_conditioning_frames(self._conditioning_frames, stream.shape[0], self._temporal_ratio)
        tail = stream[-kept:]
        payload: dict[str, Any] = {
            "segment_idx": cursor.segment_idx + 1,
            "frame_number": cursor.frame_number + frames.shape[0],
            "conditioning_frames": kept,
            "width": int(frames.shape[2]),
            "height": int(frames.shape[1]),
            "frames": [encode_png(frame) for frame in tail],
        }
        return ContinuationState(kind=STATE_KIND, payload=payload)

    def _parse_state(self, state: ContinuationState) -> _Cursor:
        payload = state_payload(state, kind=STATE_KIND, keys=_PAYLOAD_KEYS, backend="diffusers")
        width, height = payload["width"], payload["height"]
        ratio = self._spatial_ratio
        if not all(_is_edge(edge, ratio) for edge in (width, height)):
            raise IncompatibleStateError(
                f"{STATE_KIND} width and height must be multiples of {ratio} up to {MAX_FRAME_EDGE_PX}, "
                f"got {quote_state_value(width)}x{quote_state_value(height)}"
            )
        history = self._parse_frames(payload["conditioning_frames"], payload["frames"], width, height)
        return _Cursor(payload["segment_idx"], payload["frame_number"], history)

    def _parse_frames(self, count: object, frames: object, width: int, height: int) -> np.ndarray:
        """The frames this generator continues from: the state's last K, decoded (the older ones never are)."""
        ratio = self._temporal_ratio
        if (
            not isinstance(count, int)
            or isinstance(count, bool)
            or count > MAX_FRAMES_PER_SEGMENT
            or not is_valid_length(count, ratio)
        ):
            raise IncompatibleStateError(
                f"{STATE_KIND} conditioning_frames must be {ratio}*n+1 up to {MAX_FRAMES_PER_SEGMENT}, "
                f"got {quote_state_value(count)}"
            )
        if not isinstance(frames, Sequence) or isinstance(frames, (str, bytes)) or len(frames) != count:
            raise IncompatibleStateError(f"{STATE_KIND} frames must be a list of {count} base64 PNG frames")
        kept = kept_conditioning_frames(self._conditioning_frames, count, ratio)
        try:
            # A state from a generator with a larger K holds frames this one drops: decoding only the
            # kept ones bounds the work by this generator's K, not by the state.
            decoded = [decode_png(frame, width=width, height=height) for frame in frames[count - kept :]]
        except FrameFormatError as exc:
            raise IncompatibleStateError(f"{STATE_KIND} frames: {exc}") from exc
        return np.stack(decoded)


def _import_runtime() -> tuple[Any, Any, Any]:
    """torch, LTXConditionPipeline and LTXVideoCondition, or GeneratorError naming the missing extra."""
    try:
        import torch
        from diffusers import LTXConditionPipeline
        from diffusers.pipelines.ltx.pipeline_ltx_condition import LTXVideoCondition
    except ImportError as exc:
        raise GeneratorError(
            f"the diffusers backend needs torch and diffusers (pip install 'rtc-video-stream[diffusers]'): {exc}"
        ) from exc
    return torch, LTXConditionPipeline, LTXVideoCondition
