"""The ``diffusers_ltx2`` backend: LTX-2 video with sound through ``LTX2ConditionPipeline``, segment to segment.

The pipeline is loaded once, with ``from_pretrained``, from a local directory (never the hub). Each
segment is one pipeline call making video and audio together. As in the original system, a segment
continues from the previous one's decoded last K frames and the audio latents under them:

- video: the K frames are a video condition at frame 0, so the model re-draws them and carries on;
  the redrawn frames are dropped and ``request.num_frames`` new ones kept (the pipeline generates the
  shortest ``8n + 1`` length holding K + N frames, see gpu/diffusion_rules.py);
- audio: the call's audio starts at the same instant as its video, so the audio under those K frames
  is the start of the new call's audio. The pipeline takes initial ``audio_latents`` but noises them
  all alike, so after every denoising step the stored latents are put back over that prefix at the
  step's noise level (``(1 - sigma) * clean + sigma * noise``): the new audio is denoised around a
  prefix that ends exactly at the previous segment's sound. The denoised latents of the call are
  read at the last step, and the ones under the new last K frames go into the next state.

Audio leaves as float32 ``(samples, channels)`` PCM at the vocoder's rate, each chunk owning exactly
its frames (gpu/audio.py): a segment's audio is cut from the call's at the first kept frame and is
exactly ``num_frames / fps`` long (the call asks for a latent or two more than its video needs, and
a vocoder that still falls short is padded with silence).

Prompt embeddings are cached per text (gpu/prompt_embeddings.py). The distilled model's sigma
schedule is the ``sigmas`` option (fewer steps run a subset of it, as the original system does).
The continuation state, kind ``ltx2.v1``, is described in gpu/ltx2_state.py.

torch and diffusers are imported when a generator is built, never at module import.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from os import PathLike
from typing import Any

import numpy as np
from PIL import Image

from gpu.audio import AudioFormat, AudioFormatError, as_pcm, frame_sample_offset
from gpu.diffusers_backend import (
    FRAMES_PER_CHUNK,
    kept_conditioning_frames,
    pipeline_num_frames,
    segment_seed,
    validate_conditioning_frames,
)
from gpu.diffusers_runtime import (
    CALL_ERRORS,
    LoadedPipeline,
    check_common_options,
    check_model_request,
    check_state_frame_size,
    open_init_image,
)
from gpu.diffusion_rules import check_schedule, schedule_for_steps
from gpu.frames import tensor_to_uint8_frames
from gpu.generator import (
    ContinuationState,
    FrameCallback,
    GeneratorError,
    SegmentCancelled,
    SegmentRequest,
    SegmentResult,
    StepCallback,
    is_finite_number,
)
from gpu.ltx2_state import STATE_KIND, Ltx2Cursor, encode_state, parse_state

__all__ = [
    "DEFAULT_CONDITIONING_FRAMES",
    "DEFAULT_MAX_SEQUENCE_LENGTH",
    "DEFAULT_PROMPT_CACHE_SIZE",
    "STATE_KIND",
    "DiffusersLtx2Generator",
    "audio_latent_rate",
]

logger = logging.getLogger(__name__)

DEFAULT_CONDITIONING_FRAMES = 9  # as the original system (LTX2_VIDEO_CONDITIONING_NUM_FRAMES)
DEFAULT_MAX_SEQUENCE_LENGTH = 1024  # prompt tokens; the pipeline's own default
# Prompt encodings kept. An LTX-2 encoding stacks all 49 Gemma-3 hidden states: 1024 tokens x 3840 x 49
# in bfloat16 is about 385 MB of device memory each.
DEFAULT_PROMPT_CACHE_SIZE = 4
DEFAULT_STG_BLOCKS = (28,)  # the pipeline's default STG block (LTX-2.3); only used when stg_scale > 0
_EXTRA_AUDIO_LATENTS = 1  # asked beyond the video's length, so the vocoder's output covers every frame


def audio_latent_rate(pipeline: Any) -> float:
    """Audio latent frames per second of ``pipeline`` (25 for LTX-2: 16 kHz, hop 160, 4x)."""
    return float(
        pipeline.audio_sampling_rate / pipeline.audio_hop_length / float(pipeline.audio_vae_temporal_compression_ratio)
    )


class _StepHook:
    """The pipeline's ``callback_on_step_end``: re-imposes the audio prefix, keeps the final audio
    latents, and reports 1-based steps to ``on_step``."""

    def __init__(self, on_step: StepCallback | None, total: int, prefix: Any | None, noise: Any | None) -> None:
        self._on_step = on_step
        self._total = total
        self._prefix = prefix  # normalised, packed (1, Lc, C*M) clean latents, or None
        self._noise = noise
        self.final_audio: Any | None = None

    def __call__(self, pipeline: Any, index: int, timestep: Any, tensors: dict[str, Any]) -> dict[str, Any]:
        audio = tensors["audio_latents"]  # (1, L, C*M), normalised: the tensor the loop goes on with
        if self._prefix is not None and self._noise is not None:
            sigma = float(pipeline.scheduler.sigmas[index + 1])  # the level the step just reached
            length = self._prefix.shape[1]
            audio[:, :length] = (1.0 - sigma) * self._prefix + sigma * self._noise
        if index + 1 == self._total:
            self.final_audio = audio.detach().clone()
        if self._on_step is not None:
            self._on_step(index + 1, self._total)
        return {}  # nothing replaced: the audio prefix was written in place


class DiffusersLtx2Generator(LoadedPipeline):
    """LTX-2 segments with sound from a local ``LTX2ConditionPipeline`` directory, each continuing the last.

    Options (keyword-only):

    - ``model_path``: a diffusers pipeline directory (``model_index.json`` and component folders).
    - ``device``, ``dtype``, ``enable_model_cpu_offload``, ``enable_vae_tiling``: as the ``diffusers``
      backend.
    - ``conditioning_frames``: K, frames (and the audio under them) of the previous segment the next
      one continues from (``8n + 1``).
    - ``conditioning_strength``: how hard those frames (and the initial image) hold, in ``(0, 1]``.
    - ``audio_conditioning``: continue the sound from the previous segment's audio latents (default on).
    - ``sigmas``: a fixed sigma schedule, falling in ``(0, 1]``, e.g. the distilled model's
      ``[1.0, 0.99375, 0.9875, 0.98125, 0.975, 0.909375, 0.725, 0.421875]``; fewer steps run a subset.
      Unset: the pipeline's own schedule for any step count.
    - ``audio_guidance_scale``: classifier-free guidance for the audio (unset: the request's video value).
    - ``guidance_rescale``, ``stg_scale``, ``stg_blocks``, ``modality_scale``: LTX-2's further guidance
      terms (defaults: all off, as for the distilled model).
    - ``use_cross_timestep``: False for LTX-2.0 checkpoints, True (default) for LTX-2.3.
    - ``max_sequence_length``: prompt tokens given to the text encoder.
    - ``prompt_cache_size``: prompt encodings kept (per text), 0 turns the cache off.

    One segment runs at a time; concurrent callers wait their turn. Bad option values raise
    ValueError; a directory that cannot be loaded raises GeneratorError naming it.
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
        audio_conditioning: bool = True,
        sigmas: Sequence[float] | None = None,
        audio_guidance_scale: float | None = None,
        guidance_rescale: float = 0.0,
        stg_scale: float = 0.0,
        stg_blocks: Sequence[int] = DEFAULT_STG_BLOCKS,
        modality_scale: float = 1.0,
        use_cross_timestep: bool = True,
        max_sequence_length: int = DEFAULT_MAX_SEQUENCE_LENGTH,
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
        if audio_guidance_scale is not None and (not is_finite_number(audio_guidance_scale) or audio_guidance_scale < 0):
            raise ValueError(f"audio_guidance_scale must be a non-negative number, got {audio_guidance_scale!r}")
        for option, value in (("guidance_rescale", guidance_rescale), ("stg_scale", stg_scale)):
            if not is_finite_number(value) or value < 0:
                raise ValueError(f"{option} must be a non-negative number, got {value!r}")
        if not is_finite_number(modality_scale) or modality_scale < 1.0:
            raise ValueError(f"modality_scale must be a number >= 1 (1 is off), got {modality_scale!r}")
        blocks = list(stg_blocks) if isinstance(stg_blocks, Sequence) and not isinstance(stg_blocks, str) else None
        if not blocks or not all(isinstance(b, int) and not isinstance(b, bool) and b >= 0 for b in blocks):
            raise ValueError(f"stg_blocks must be a non-empty list of transformer block indices, got {stg_blocks!r}")
        self._schedule = check_schedule(sigmas, name="sigmas", high=1.0)
        if self._schedule is not None and self._schedule[-1] <= 0.0:
            raise ValueError("sigmas must not include the terminal 0 (the scheduler appends it)")
        self._strength = float(conditioning_strength)
        self._audio_conditioning = bool(audio_conditioning)
        self._audio_guidance = None if audio_guidance_scale is None else float(audio_guidance_scale)
        self._guidance_rescale = float(guidance_rescale)
        self._stg_scale = float(stg_scale)
        self._stg_blocks = blocks
        self._modality_scale = float(modality_scale)
        self._use_cross_timestep = bool(use_cross_timestep)

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
            label="LTX-2",
            prompt_cache_size=prompt_cache_size,
            max_sequence_length=max_sequence_length,
        )
        pipeline = self._pipeline
        self._latent_rate = audio_latent_rate(pipeline)
        self._audio_shape = (
            int(pipeline.audio_latent_channels),
            int(pipeline.audio_mel_bins) // int(pipeline.audio_vae_mel_compression_ratio),
        )
        try:
            self._conditioning_frames = validate_conditioning_frames(conditioning_frames, self._temporal_ratio)
            self._audio_format = _vocoder_format(pipeline.vocoder)
        except (ValueError, GeneratorError):
            self.close()  # give the device memory back now, not when the half-built object is collected
            raise
        if enable_vae_tiling:
            pipeline.vae.enable_tiling()
        pipeline.set_progress_bar_config(disable=True)
        # The step hook needs the loop's audio latents (the pipeline lists only video tensors).
        pipeline._callback_tensor_inputs = [*type(pipeline)._callback_tensor_inputs, "audio_latents"]
        if self._schedule is not None and pipeline.scheduler.config.get("use_dynamic_shifting"):
            logger.warning(
                "diffusers_ltx2: the scheduler of %s shifts sigmas (use_dynamic_shifting): the configured sigmas "
                "are shifted by resolution before use",
                self._path,
            )
        logger.info(
            "diffusers_ltx2: loaded %s on %s as %s in %.1f s (K=%d, %dx spatial, %dx temporal, audio %d Hz x %d)",
            self._path,
            self._device,
            str(self._dtype).removeprefix("torch."),
            time.perf_counter() - started,
            self._conditioning_frames,
            self._spatial_ratio,
            self._temporal_ratio,
            self._audio_format.sample_rate,
            self._audio_format.channels,
        )

    @property
    def name(self) -> str:
        return "diffusers_ltx2"

    @property
    def audio_format(self) -> AudioFormat:
        """The vocoder's sample rate and channels."""
        return self._audio_format

    def check_state(self, state: ContinuationState) -> None:
        """Raise IncompatibleStateError unless ``state`` is a well-formed ``ltx2.v1`` state for this model."""
        self._parse_state(state)

    def generate(
        self,
        request: SegmentRequest,
        on_step: StepCallback | None = None,
        on_frames: FrameCallback | None = None,
    ) -> SegmentResult:
        """Generate ``request.num_frames`` new frames and their audio, continuing ``request.continuation``.

        The frames cross to the host in chunks of FRAMES_PER_CHUNK, each handed to ``on_frames`` with
        the audio it owns before the next is converted.
        """
        check_model_request(
            request, spatial_ratio=self._spatial_ratio, schedule=self._schedule, schedule_name="sigmas"
        )
        cursor = self._cursor(request)
        check_state_frame_size(STATE_KIND, cursor.frames, request)
        init_image = open_init_image(request.init_image_path) if cursor.frames is None else None
        with self._running("diffusers_ltx2") as pipeline:
            video, pcm, latents = self._run_pipeline(pipeline, request, cursor, init_image, on_step)
        frames = self._hand_over(video, pcm, request, cursor.segment_idx, on_frames)
        return SegmentResult(frames=frames, continuation=self._next_state(request, cursor, frames, latents), audio=pcm)

    # Loading.

    # Generation.

    def _cursor(self, request: SegmentRequest) -> Ltx2Cursor:
        if request.continuation is None:
            return Ltx2Cursor(request.segment_idx, 0)
        return self._parse_state(request.continuation)

    def _parse_state(self, state: ContinuationState) -> Ltx2Cursor:
        return parse_state(
            state,
            spatial_ratio=self._spatial_ratio,
            temporal_ratio=self._temporal_ratio,
            keep_frames=self._conditioning_frames,
            audio_shape=self._audio_shape,
        )

    def _conditions(self, cursor: Ltx2Cursor, init_image: Image.Image | None) -> list[Any]:
        if cursor.frames is not None:
            return [self._condition_class(frames=cursor.frames, index=0, strength=self._strength)]
        if init_image is not None:
            return [self._condition_class(frames=init_image, index=0, strength=self._strength)]
        return []

    def _guidance(self, request: SegmentRequest) -> dict[str, Any]:
        video = float(request.guidance_scale)
        audio = video if self._audio_guidance is None else self._audio_guidance
        return {
            "guidance_scale": video,
            "audio_guidance_scale": audio,
            "guidance_rescale": self._guidance_rescale,
            "audio_guidance_rescale": self._guidance_rescale,
            "stg_scale": self._stg_scale,
            "audio_stg_scale": self._stg_scale,
            "spatio_temporal_guidance_blocks": self._stg_blocks if self._stg_scale > 0 else None,
            "modality_scale": self._modality_scale,
            "audio_modality_scale": self._modality_scale,
            "use_cross_timestep": self._use_cross_timestep,
        }

    def _run_pipeline(
        self,
        pipeline: Any,
        request: SegmentRequest,
        cursor: Ltx2Cursor,
        init_image: Image.Image | None,
        on_step: StepCallback | None,
    ) -> tuple[Any, np.ndarray, np.ndarray]:
        """The new frames (``(N, 3, H, W)`` float in ``[0, 1]``, on the device), their PCM, and the
        call's denoised audio latents ``(C, L, M)``."""
        torch = self._torch
        redrawn = 0 if cursor.frames is None else cursor.frames.shape[0]
        total_frames = pipeline_num_frames(redrawn, request.num_frames, self._temporal_ratio)
        steps = request.num_inference_steps
        seed = segment_seed(request.seed, cursor.segment_idx)
        noise = torch.Generator(device=self._device).manual_seed(seed)
        guidance = self._guidance(request)
        try:
            embeddings = self._embeddings(pipeline, request, guidance)
            initial, prefix, prefix_noise = self._audio_start(pipeline, request, cursor, total_frames, seed)
            hook = _StepHook(on_step, steps, prefix, prefix_noise)
            output = pipeline(
                conditions=self._conditions(cursor, init_image) or None,
                **embeddings,
                **guidance,
                width=request.width,
                height=request.height,
                num_frames=total_frames,
                frame_rate=float(request.fps),
                num_inference_steps=steps,
                sigmas=None if self._schedule is None else schedule_for_steps(self._schedule, steps),
                generator=noise,
                audio_latents=initial,
                max_sequence_length=self._max_sequence_length,
                output_type="pt",
                callback_on_step_end=hook,
                callback_on_step_end_tensor_inputs=["audio_latents"],
            )
            latents = self._final_latents(pipeline, hook.final_audio)
            pcm = self._segment_audio(output.audio[0], redrawn, request)
        except SegmentCancelled:
            raise  # the caller's own stop signal from on_step, not a pipeline failure
        except (*CALL_ERRORS, AudioFormatError) as exc:
            raise GeneratorError(
                f"LTX-2 pipeline failed on segment {cursor.segment_idx}: {type(exc).__name__}: {exc}"
            ) from exc
        video = output.frames[0]  # (T, 3, H, W) float in [0, 1], on the device
        return video[redrawn : redrawn + request.num_frames], pcm, latents

    def _embeddings(self, pipeline: Any, request: SegmentRequest, guidance: dict[str, Any]) -> dict[str, Any]:
        """The pipeline's prompt arguments as embeddings, each text encoded once (prompt cache)."""
        embeds, mask = self._encode(pipeline, request.prompt)
        arguments: dict[str, Any] = {"prompt_embeds": embeds, "prompt_attention_mask": mask}
        # The pipeline's own test for classifier-free guidance: either modality guided.
        if guidance["guidance_scale"] > 1.0 or guidance["audio_guidance_scale"] > 1.0:
            negative, negative_mask = self._encode(pipeline, request.negative_prompt or "")
            arguments.update(negative_prompt_embeds=negative, negative_prompt_attention_mask=negative_mask)
        return arguments


    def _audio_start(
        self, pipeline: Any, request: SegmentRequest, cursor: Ltx2Cursor, total_frames: int, seed: int
    ) -> tuple[Any, Any | None, Any | None]:
        """The call's initial audio latents ``(1, C, L, M)`` and, when continuing, the normalised packed
        prefix to hold with its noise.

        The initial latents are the latent mean (zero once normalised) with the previous segment's
        latents over the start, so the pipeline's own noising draws the fresh part as it would unasked.
        """
        torch = self._torch
        channels, bins = self._audio_shape
        length = math.ceil(total_frames / request.fps * self._latent_rate) + _EXTRA_AUDIO_LATENTS
        mean = pipeline.audio_vae.latents_mean.to(device=self._device, dtype=torch.float32)
        initial = mean.view(channels, bins)[None, :, None, :].expand(1, channels, length, bins).clone()
        if not self._audio_conditioning or cursor.audio_latents is None or cursor.frames is None:
            return initial, None, None
        wanted = round(cursor.frames.shape[0] / request.fps * self._latent_rate)
        count = max(1, min(wanted, cursor.audio_latents.shape[1], length))
        clean = torch.from_numpy(np.ascontiguousarray(cursor.audio_latents[:, -count:])).to(self._device)
        initial[0, :, :count] = clean
        std = pipeline.audio_vae.latents_std
        prefix = pipeline._normalize_audio_latents(pipeline._pack_audio_latents(clean[None]), mean, std)
        cpu_noise = torch.Generator().manual_seed(seed ^ 0x5EED)
        prefix_noise = torch.randn(prefix.shape, generator=cpu_noise, dtype=torch.float32).to(self._device)
        return initial, prefix, prefix_noise

    def _final_latents(self, pipeline: Any, packed: Any | None) -> np.ndarray:
        """The call's denoised audio latents as ``(C, L, M)`` float32 on the host, as the pipeline unpacks them."""
        if packed is None:
            raise RuntimeError("the pipeline ran no denoising step")
        mean, std = pipeline.audio_vae.latents_mean, pipeline.audio_vae.latents_std
        latents = pipeline._denormalize_audio_latents(packed, mean, std)
        latents = pipeline._unpack_audio_latents(latents, packed.shape[1], num_mel_bins=self._audio_shape[1])
        return np.ascontiguousarray(latents[0].float().cpu().numpy())

    def _segment_audio(self, audio: Any, redrawn: int, request: SegmentRequest) -> np.ndarray:
        """The PCM the new frames own: from the first kept frame, exactly ``num_frames / fps`` long."""
        rate = self._audio_format.sample_rate
        call = audio.float().cpu().numpy().T  # (samples, channels)
        start = frame_sample_offset(redrawn, request.fps, rate)
        needed = frame_sample_offset(request.num_frames, request.fps, rate)
        pcm = call[start : start + needed]
        if pcm.shape[0] < needed:  # a vocoder shorter than the frames: pad the end with silence
            pcm = np.concatenate([pcm, np.zeros((needed - pcm.shape[0], call.shape[1]), dtype=np.float32)])
        return as_pcm(np.ascontiguousarray(pcm), self._audio_format, expected=needed)

    def _hand_over(
        self, video: Any, pcm: np.ndarray, request: SegmentRequest, segment_idx: int, on_frames: FrameCallback | None
    ) -> np.ndarray:
        """The frames as uint8, chunk by chunk, each through ``on_frames`` with its audio before the next."""
        count, _, height, width = video.shape
        rate = self._audio_format.sample_rate
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
                audio = pcm[frame_sample_offset(start, request.fps, rate) : frame_sample_offset(stop, request.fps, rate)]
                on_frames(frames[start:stop], audio)  # outside the try: a receiver's exception is its own
        return frames

    # Continuation state.

    def _next_state(
        self, request: SegmentRequest, cursor: Ltx2Cursor, frames: np.ndarray, latents: np.ndarray
    ) -> ContinuationState:
        history = cursor.frames
        stream = frames if history is None else np.concatenate([history, frames])
        kept = kept_conditioning_frames(self._conditioning_frames, stream.shape[0], self._temporal_ratio)
        # The call's frame 0 is the first redrawn frame; the stream's last frame is its frame `end - 1`.
        end = (0 if history is None else history.shape[0]) + frames.shape[0]
        # The latents under them: as many as the next call's prefix takes, ending where those frames end.
        count = max(1, round(kept / request.fps * self._latent_rate))
        last = min(latents.shape[1], max(count, round(end / request.fps * self._latent_rate)))
        return encode_state(
            segment_idx=cursor.segment_idx + 1,
            frame_number=cursor.frame_number + frames.shape[0],
            fps=request.fps,
            frames=stream[-kept:],
            audio_latents=latents[:, max(0, last - count) : last],
        )


def _vocoder_format(vocoder: Any) -> AudioFormat:
    config = vocoder.config
    rate = config.get("output_sampling_rate") or config.get("sampling_rate")
    channels = config.get("out_channels", 2)
    try:
        return AudioFormat(sample_rate=int(rate), channels=int(channels))
    except (AudioFormatError, TypeError) as exc:
        raise GeneratorError(f"the pipeline's vocoder writes audio the transports cannot carry: {exc}") from exc


def _import_runtime() -> tuple[Any, Any, Any]:
    """torch, LTX2ConditionPipeline and LTX2VideoCondition, or GeneratorError naming the missing extra."""
    try:
        import torch
        from diffusers import LTX2ConditionPipeline
        from diffusers.pipelines.ltx2.pipeline_ltx2_condition import LTX2VideoCondition
    except ImportError as exc:
        raise GeneratorError(
            f"the diffusers_ltx2 backend needs torch and diffusers (pip install 'rtc-video-stream[diffusers]'): {exc}"
        ) from exc
    return torch, LTX2ConditionPipeline, LTX2VideoCondition
