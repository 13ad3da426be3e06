"""What both diffusers backends share about the runtime: devices, dtypes, and the errors to expect.

torch is passed in by the caller (imported only when a generator is built), so importing this module
never imports torch.
"""

from __future__ import annotations

import contextlib
import gc
import json
import re
import threading
from collections.abc import Iterator, Mapping, Sequence
from os import PathLike
from pathlib import Path
from typing import Any

from PIL import Image

from gpu.generator import (
    MAX_FRAME_EDGE_PX,
    MAX_STATE_COUNTER,
    ContinuationState,
    GeneratorError,
    IncompatibleStateError,
    SegmentRequest,
    check_segment_limits,
    is_finite_number,
    is_state_counter,
    quote_state_value,
)
from gpu.prompt_embeddings import PromptEmbeddingCache, encode_with_cache

__all__ = [
    "CALL_ERRORS",
    "DEVICE_PATTERN",
    "DTYPES",
    "LOAD_ERRORS",
    "LoadedPipeline",
    "check_common_options",
    "check_model_dir",
    "check_model_request",
    "check_state_frame_size",
    "load_pipeline",
    "open_init_image",
    "resolve_device",
    "resolve_dtype",
    "resolve_placement",
    "state_payload",
]

_MODEL_INDEX = "model_index.json"
DTYPES = ("auto", "float32", "float16", "bfloat16")
DEVICE_PATTERN = re.compile(r"auto|cpu|cuda(:\d+)?")
# What from_pretrained raises for a directory it cannot use (bad JSON, missing files or classes).
LOAD_ERRORS = (OSError, ValueError, KeyError, TypeError, AttributeError, ImportError, RuntimeError)
# What a pipeline call raises for inputs or a device it cannot handle (CUDA OOM is a RuntimeError).
CALL_ERRORS = (RuntimeError, ValueError, TypeError, IndexError)


def resolve_device(torch: Any, device: str) -> Any:
    """The torch device for ``device`` (``auto``: CUDA when there is one); GeneratorError if it is absent."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    resolved = torch.device(device)
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise GeneratorError(f"device {device!r} asked for but CUDA is not available")
        if resolved.index is not None and resolved.index >= torch.cuda.device_count():
            raise GeneratorError(f"device {device!r} asked for but only {torch.cuda.device_count()} CUDA devices exist")
    return resolved


def resolve_dtype(torch: Any, dtype: str, device: Any) -> Any:
    """The torch dtype for ``dtype`` (``auto``: bfloat16 on CUDA, float32 elsewhere)."""
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[dtype]


def check_model_dir(path: str | Path) -> None:
    """GeneratorError naming ``path`` unless it holds a saved pipeline (cheap: no torch, no weights read)."""
    path = Path(path)
    if not path.is_dir():
        raise GeneratorError(f"diffusers model directory {str(path)!r} does not exist or is not a directory")
    if not (path / _MODEL_INDEX).is_file():
        raise GeneratorError(f"diffusers model directory {str(path)!r} has no {_MODEL_INDEX}: not a saved pipeline")
    _check_component_folders(path)


def _check_component_folders(path: Path) -> None:
    """GeneratorError unless every component ``model_index.json`` declares has its folder.

    from_pretrained would fail on most missing folders, but transformers 5 silently builds a default
    (unknown-token-only) tokenizer when the tokenizer folder is gone: prompts would turn to noise.
    """
    try:
        index = json.loads((path / _MODEL_INDEX).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise GeneratorError(f"cannot read {_MODEL_INDEX} in {str(path)!r}: {exc}") from exc
    if not isinstance(index, dict):
        raise GeneratorError(f"{_MODEL_INDEX} in {str(path)!r} is not a JSON object")
    missing = sorted(
        name
        for name, spec in index.items()
        if not name.startswith("_")
        and isinstance(spec, list)
        and None not in spec
        and not (path / name).is_dir()
    )
    if missing:
        raise GeneratorError(f"diffusers model directory {str(path)!r} lacks component folders: {', '.join(missing)}")


def load_pipeline(pipeline_class: Any, path: Path, *, dtype: Any, device: Any, offload: bool, label: str) -> Any:
    """``pipeline_class`` from the local directory ``path``, every required component present, on
    ``device`` (or offloaded to it); GeneratorError naming ``label`` and the path otherwise."""
    check_model_dir(path)
    try:
        pipeline = pipeline_class.from_pretrained(str(path), dtype=dtype, local_files_only=True, use_safetensors=True)
    except LOAD_ERRORS as exc:
        raise GeneratorError(f"cannot load an {label} pipeline from {str(path)!r}: {type(exc).__name__}: {exc}") from exc
    optional = set(getattr(pipeline, "_optional_components", ()))
    missing = sorted(name for name, component in pipeline.components.items() if component is None and name not in optional)
    if missing:
        raise GeneratorError(f"{label} pipeline in {str(path)!r} lacks components: {', '.join(missing)}")
    try:
        if offload:
            pipeline.enable_model_cpu_offload(device=device)
        else:
            pipeline.to(device)
    except CALL_ERRORS as exc:
        raise GeneratorError(
            f"cannot place the pipeline from {str(path)!r} on {device}: {type(exc).__name__}: {exc}"
        ) from exc
    return pipeline


def check_model_request(
    request: SegmentRequest, *, spatial_ratio: int, schedule: Sequence[float] | None, schedule_name: str
) -> None:
    """GeneratorError for a request the model cannot make: edges off its pixel grid, counts out of
    range, a negative guidance scale, more steps than its configured schedule has."""
    for edge, value in (("width", request.width), ("height", request.height)):
        if not spatial_ratio <= value <= MAX_FRAME_EDGE_PX or value % spatial_ratio:
            raise GeneratorError(
                f"frame {edge} {value} must be a multiple of {spatial_ratio} in {spatial_ratio}..{MAX_FRAME_EDGE_PX}"
                " for this model"
            )
    check_segment_limits(request)
    if not is_finite_number(request.guidance_scale) or request.guidance_scale < 0:
        raise GeneratorError(f"guidance_scale must be a non-negative number, got {request.guidance_scale!r}")
    if schedule is not None and request.num_inference_steps > len(schedule):
        raise GeneratorError(
            f"num_inference_steps {request.num_inference_steps} exceeds the {len(schedule)} steps "
            f"of this model's configured {schedule_name}"
        )


def open_init_image(path: str | None) -> Image.Image | None:
    """The initial image at ``path`` as RGB (None for no path); GeneratorError if it cannot be read."""
    if path is None:
        return None
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise GeneratorError(f"cannot load init image {path!r}: {exc}") from exc


def state_payload(state: ContinuationState, *, kind: str, keys: Sequence[str], backend: str) -> Mapping[str, Any]:
    """The payload of a ``kind`` state with every key in ``keys`` and valid ``segment_idx`` and
    ``frame_number`` counters; IncompatibleStateError otherwise."""
    if state.kind != kind:
        raise IncompatibleStateError(f"{backend} generator cannot continue from a {state.kind!r} state (expects {kind!r})")
    payload = state.payload
    if not isinstance(payload, Mapping) or any(key not in payload for key in keys):
        raise IncompatibleStateError(f"{kind} payload must be an object with keys {list(keys)}")
    for key in ("segment_idx", "frame_number"):
        if not is_state_counter(payload[key]):
            raise IncompatibleStateError(
                f"{kind} {key} must be an int in 0..{MAX_STATE_COUNTER}, got {quote_state_value(payload[key])}"
            )
    return payload


def check_common_options(
    *,
    model_path: object,
    device: object,
    dtype: object,
    conditioning_frames: object,
    conditioning_strength: object,
    max_sequence_length: object,
) -> Path:
    """ValueError for a bad value of an option both model backends take; the model directory otherwise."""
    if not isinstance(model_path, (str, PathLike)) or not str(model_path):
        raise ValueError(f"model_path must be a directory path, got {model_path!r}")
    if not isinstance(device, str) or not DEVICE_PATTERN.fullmatch(device):
        raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {device!r}")
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    if not isinstance(conditioning_frames, int) or isinstance(conditioning_frames, bool) or conditioning_frames < 1:
        raise ValueError(f"conditioning_frames must be a positive int, got {conditioning_frames!r}")
    if not is_finite_number(conditioning_strength) or not 0.0 < conditioning_strength <= 1.0:
        raise ValueError(f"conditioning_strength must be in (0, 1], got {conditioning_strength!r}")
    if not isinstance(max_sequence_length, int) or isinstance(max_sequence_length, bool) or max_sequence_length < 1:
        raise ValueError(f"max_sequence_length must be a positive int, got {max_sequence_length!r}")
    return Path(model_path).expanduser()


def resolve_placement(torch: Any, device: str, dtype: str, *, offload: bool) -> tuple[Any, Any]:
    """The torch device and dtype a pipeline runs on; ValueError for CPU offload without CUDA."""
    resolved = resolve_device(torch, device)
    if offload and resolved.type != "cuda":
        raise ValueError(f"enable_model_cpu_offload needs a CUDA device, got {resolved}")
    return resolved, resolve_dtype(torch, dtype, resolved)


class LoadedPipeline:
    """What both diffusers backends share: the pipeline on its device, called one at a time (``_lock``),
    its VAE's compression, the prompt encodings kept between segments, and freeing it all."""

    _conditioning_frames: int

    def _load(
        self,
        torch: Any,
        pipeline_class: Any,
        path: Path,
        *,
        device: str,
        dtype: str,
        offload: bool,
        label: str,
        prompt_cache_size: int,
        max_sequence_length: int,
    ) -> None:
        """Place and load the pipeline (ValueError / GeneratorError as ``load_pipeline`` and ``resolve_placement``)."""
        self._torch = torch
        self._prompts: PromptEmbeddingCache[tuple[Any, Any]] = PromptEmbeddingCache(prompt_cache_size)
        self._max_sequence_length = max_sequence_length
        self._lock = threading.Lock()  # one pipeline call at a time; also guards close()
        self._device, self._dtype = resolve_placement(torch, device, dtype, offload=offload)
        self._pipeline: Any = load_pipeline(
            pipeline_class, path, dtype=self._dtype, device=self._device, offload=offload, label=label
        )
        self._temporal_ratio = int(self._pipeline.vae_temporal_compression_ratio)
        self._spatial_ratio = int(self._pipeline.vae_spatial_compression_ratio)

    @property
    def prompt_cache(self) -> PromptEmbeddingCache[tuple[Any, Any]]:
        """The prompt encodings kept between segments."""
        return self._prompts

    @property
    def conditioning_frames(self) -> int:
        """K: how many trailing frames each segment hands to the next."""
        return self._conditioning_frames

    @property
    def temporal_ratio(self) -> int:
        """The VAE's time compression: valid clip lengths are ``temporal_ratio * n + 1``."""
        return self._temporal_ratio

    @property
    def spatial_ratio(self) -> int:
        """The VAE's space compression: widths and heights are multiples of it."""
        return self._spatial_ratio

    def close(self) -> None:
        """Drop the pipeline and free its memory; idempotent, waits for a running segment."""
        with self._lock:
            pipeline, self._pipeline = self._pipeline, None
        if pipeline is None:
            return
        self._prompts.clear()
        del pipeline
        gc.collect()
        if self._device.type == "cuda":
            self._torch.cuda.empty_cache()

    @contextlib.contextmanager
    def _running(self, backend: str) -> Iterator[Any]:
        """The pipeline, held for one call (GeneratorError once closed)."""
        with self._lock:
            if self._pipeline is None:
                raise GeneratorError(f"{backend} generator is closed")
            yield self._pipeline

    def _encode(self, pipeline: Any, text: str) -> tuple[Any, Any]:
        """``(embeddings, mask)`` of ``text``, encoded once per text (the prompt cache)."""
        return encode_with_cache(
            self._prompts,
            pipeline,
            text,
            torch=self._torch,
            max_sequence_length=self._max_sequence_length,
            device=self._device,
        )


def check_state_frame_size(kind: str, frames: Any, request: SegmentRequest) -> None:
    """IncompatibleStateError when a state's ``(n, h, w, 3)`` frames are not the request's size (None: no state)."""
    if frames is not None and frames.shape[1:3] != (request.height, request.width):
        height, width = frames.shape[1:3]
        raise IncompatibleStateError(
            f"{kind} state holds {width}x{height} frames but the request is {request.width}x{request.height}"
        )
