"""The original system's serve-config layout (FastVideo's ``ServeConfig``), translated into ours.

``fastvideo serve --config F`` reads a YAML laid out as ``fastvideo/api/schema.py``'s ``ServeConfig``:
``generator{model_path, revision, trust_remote_code, engine{...}, pipeline{...}}``,
``server{host, port, output_dir}``, ``default_request`` (a ``GenerationRequest``) and
``streaming{session_timeout_seconds, generation_segment_cap, stream_mode, warmup{...}, pool{...},
prompt{...}, safety{...}}`` (examples: its ``examples/serving/streaming_demo.yaml`` and
``apps/dreamverse/serve_configs/streaming_demo.yaml``). :func:`load_any_config` reads either layout:

* **Detection.** A file is in the original layout when it holds a key only the original has
  (``generator.model_path|engine|pipeline|revision|trust_remote_code``, ``server.output_dir``,
  ``streaming.stream_mode|warmup|pool``, ``streaming.prompt.enabled|provider``). Ours forbids every
  one of them, so no valid file of ours is ever taken for the original's.
* **Translation.** Each key the original defines is translated (:data:`KEY_MAPPING`), with the
  original's own default where the file leaves a key out and that default differs from ours
  (``server.host 0.0.0.0``, ``server.port 8000``, ``generation_segment_cap 6``, 9 conditioning
  frames, warm-up on with 2400 s, CPU offload on). ``default_request`` takes only what the file
  writes, as the original merges only operator-written request fields.
* **Ours alongside.** A key the original does not define (``auth:``, ``limits:``, ``store:``,
  ``server.admin_token``, ``streaming.max_sessions``, ...) is taken as ours, unchanged, and wins
  over a translated value: an original-layout file can be given the settings only we have.
* **What cannot be honoured** is named, one :class:`Unhonoured` per key: a warning when ignoring it
  changes only speed, memory or diagnostics (``engine.compile``, ``engine.quantization``, ...); a
  :class:`ConfigError` (exit 2) when ignoring it would change what clients receive (``stream_mode:
  legacy_jpeg``, other weights or a LoRA, a non-video ``workload_type``, no ``streaming`` block: the
  original then serves its REST API, which we do not have).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import ValidationError

from rtc_server.config import ConfigError, ServiceConfig, load_config, read_config_mapping

__all__ = [
    "KEY_MAPPING",
    "LoadedConfig",
    "Unhonoured",
    "is_original_layout",
    "load_any_config",
    "origin_hints",
    "translate_original",
]

Layout = Literal["ours", "original"]

# Keys that exist only in the original layout (section -> keys); any one of them identifies it.
_ORIGINAL_MARKERS: Mapping[str, frozenset[str]] = {
    "generator": frozenset({"model_path", "engine", "pipeline", "revision", "trust_remote_code"}),
    "server": frozenset({"output_dir"}),
    "streaming": frozenset({"stream_mode", "warmup", "pool"}),
}
_ORIGINAL_PROMPT_MARKERS = frozenset({"enabled", "provider"})

# The original's defaults that differ from ours and change behaviour when the file leaves them out.
ORIGINAL_HOST = "0.0.0.0"
ORIGINAL_PORT = 8000
ORIGINAL_SEGMENT_CAP = 6  # segments per session
ORIGINAL_CONDITIONING_FRAMES = 9
ORIGINAL_WARMUP_TIMEOUT_S = 2400  # seconds, boot plus warm-up of a worker
ORIGINAL_PROMPT_MODEL = "gpt-oss-120b"
ORIGINAL_PROMPT_TIMEOUT_MS = 20000  # milliseconds
ORIGINAL_PROVIDERS = ("cerebras", "groq")
_MODEL_BACKENDS = ("diffusers", "diffusers_ltx2")
_ORIGINAL_SAMPLING_KEYS = frozenset(
    {
        "num_videos_per_prompt",
        "seed",
        "max_sequence_length",
        "num_frames",
        "height",
        "width",
        "height_sr",
        "width_sr",
        "fps",
        "num_inference_steps",
        "num_inference_steps_sr",
        "guidance_scale",
        "batch_cfg",
        "guidance_scale_2",
        "cfg_normalization",
        "cfg_truncation",
        "guidance_rescale",
        "true_cfg_scale",
        "use_embedded_guidance",
        "boundary_ratio",
        "sigmas",
    }
)
# The original's offload flags for the parts an LTX pipeline has, all True by default; one switch here.
# (image_encoder: LTX has none; dit_layerwise is a variant of offloading the DiT.)
_OFFLOAD_MODULES = ("dit", "text_encoder", "vae")
_OFFLOAD_OTHER = ("dit_layerwise", "image_encoder", "pin_cpu_memory")

# original key -> where it lands here (documentation, and the hints under an error's message).
KEY_MAPPING: Mapping[str, str] = {
    "server.host": "server.host (default 0.0.0.0, as the original)",
    "server.port": "server.port (default 8000, as the original)",
    "generator.model_path": "generator.options.model_path (a local directory; backend diffusers_ltx2, or "
    "diffusers when its model_index.json names an LTX-Video pipeline)",
    "generator.engine.offload.{dit,text_encoder,vae}": "generator.options."
    "enable_model_cpu_offload (on when any is on; all are on by default in the original)",
    "generator.pipeline.vae_tiling": "generator.options.enable_vae_tiling",
    "default_request.prompt": "default_request.prompt",
    "default_request.negative_prompt": "default_request.negative_prompt",
    "default_request.sampling.{width,height,fps,num_inference_steps,guidance_scale,seed}": "default_request."
    "sampling.<same>",
    "default_request.sampling.num_frames": "default_request.sampling.num_frames minus the conditioning frames "
    "(the original counts the frames a continuation redraws; 121 with 9 -> 112 new)",
    "streaming.session_timeout_seconds": "streaming.session_timeout_seconds",
    "streaming.generation_segment_cap": "streaming.generation_segment_cap (default 6, as the original)",
    "streaming.warmup.enabled": "pool.warmup",
    "streaming.warmup.timeout_seconds": "pool.boot_timeout_seconds (default 2400)",
    "streaming.pool.num_workers": "pool.num_workers, with pool.backend subprocess (one process per GPU)",
    "streaming.pool.conditioning_num_frames": "generator.options.conditioning_frames (default 9)",
    "streaming.prompt.enabled/provider/model": "streaming.prompt.providers [{kind: provider, model}] when "
    "enabled, else none (enhancement off)",
    "streaming.prompt.model": "streaming.prompt.model",
    "streaming.prompt.timeout_ms": "streaming.prompt.timeout_ms and deadline_ms (default 20000)",
    "streaming.prompt.system_prompt_dir": "streaming.prompt.system_prompt_dir",
    "streaming.safety.enabled": "streaming.safety.enabled",
    "streaming.safety.classifier_path": "streaming.safety.classifier_path",
}


@dataclass(frozen=True)
class Unhonoured:
    """A key of the original layout that this server does not honour, and why (a warning)."""

    key: str
    reason: str


@dataclass(frozen=True)
class LoadedConfig:
    """A validated config, which layout its file was in, and what of it could not be honoured."""

    config: ServiceConfig
    layout: Layout
    warnings: tuple[Unhonoured, ...] = ()
    origins: Mapping[str, str] | None = None  # our key -> the file's key(s) it came from (original layout)


class _Fatal(Exception):
    """A key whose being ignored would change behaviour: the whole translation stops."""

    def __init__(self, key: str, reason: str) -> None:
        super().__init__(f"{key}: {reason}")
        self.key = key
        self.reason = reason


# -- detection ---------------------------------------------------------------------------------------


def is_original_layout(raw: Mapping[str, Any]) -> bool:
    """True when ``raw`` (a YAML mapping) holds a key only FastVideo's ``ServeConfig`` has."""
    for section, keys in _ORIGINAL_MARKERS.items():
        value = raw.get(section)
        if isinstance(value, Mapping) and keys & value.keys():
            return True
    streaming = raw.get("streaming")
    prompt = streaming.get("prompt") if isinstance(streaming, Mapping) else None
    return isinstance(prompt, Mapping) and bool(_ORIGINAL_PROMPT_MARKERS & prompt.keys())


# -- translation -------------------------------------------------------------------------------------


def _leaves(value: Any, prefix: str) -> Iterator[tuple[str, Any]]:
    """Each (dotted key, value) under ``value``; an empty mapping counts as one leaf."""
    if isinstance(value, Mapping) and value:
        for key, item in value.items():
            yield from _leaves(item, f"{prefix}.{key}")
    else:
        yield prefix, value


def _section(raw: Mapping[str, Any], key: str, where: str) -> dict[str, Any]:
    value = raw.get(key)
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise _Fatal(where, f"must be a mapping, got {type(value).__name__}")
    return dict(value)


def _merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with ``extra`` laid over it, mappings merged key by key (``extra`` wins)."""
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = _merge(dict(merged[key]), value)
        else:
            merged[key] = value
    return merged


class _Translator:
    """One pass over an original-layout mapping; collects our mapping, warnings and key origins."""

    def __init__(self, raw: Mapping[str, Any]) -> None:
        self.raw = raw
        self.out: dict[str, Any] = {}
        self.warnings: list[Unhonoured] = []
        self.origins: dict[str, str] = {}
        self.options: dict[str, Any] = {}

    def warn(self, key: str, reason: str) -> None:
        self.warnings.append(Unhonoured(key, reason))

    def put(self, ours: str, value: Any, origin: str) -> None:
        node = self.out
        *parents, last = ours.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
        self.origins[ours] = origin

    def passthrough(self, section: Mapping[str, Any], known: frozenset[str], ours: str) -> None:
        """Keys of ``section`` the original does not define are ours: kept as written."""
        extra = {key: value for key, value in section.items() if key not in known}
        if extra:
            node = self.out
            for part in ours.split("."):
                node = node.setdefault(part, {})
            node.update(_merge(node, extra))

    def run(self) -> tuple[dict[str, Any], list[Unhonoured], dict[str, str]]:
        self.server()
        backend = self.generator()
        self.streaming(backend)
        self.default_request(backend)
        for key, value in self.raw.items():
            if key not in ("server", "generator", "default_request", "streaming"):
                self.out[key] = _merge(self.out.get(key, {}), value) if isinstance(value, Mapping) else value
        if backend in _MODEL_BACKENDS:
            options = _section(self.out.get("generator", {}), "options", "generator.options")
            self.out.setdefault("generator", {})["options"] = _merge(self.options, options)
        self.raise_limits()
        return self.out, self.warnings, self.origins

    # server ------------------------------------------------------------------------------------

    def server(self) -> None:
        server = _section(self.raw, "server", "server")
        self.put("server.host", server.get("host", ORIGINAL_HOST), "server.host")
        self.put("server.port", server.get("port", ORIGINAL_PORT), "server.port")
        if "output_dir" in server:
            self.warn("server.output_dir", "the streaming server writes no output files; ignored")
        self.passthrough(server, frozenset({"host", "port", "output_dir"}), "server")

    # generator ---------------------------------------------------------------------------------

    def generator(self) -> str:
        generator = _section(self.raw, "generator", "generator")
        backend = generator.get("backend")
        model_path = generator.get("model_path")
        if backend is None and model_path is None:
            raise _Fatal("generator.model_path", "missing: the original layout requires it")
        if backend is None:
            backend = _backend_for(model_path)
        self.put(
            "generator.backend", backend, "generator.model_path" if "backend" not in generator else "generator.backend"
        )
        if model_path is not None:
            if not Path(str(model_path)).is_dir() and not Path(str(model_path)).is_absolute():
                self.warn(
                    "generator.model_path",
                    f"{model_path!r} is no directory here: models load from a local directory only (no hub at "
                    "run time); download it once and set model_path to that directory",
                )
            if backend in _MODEL_BACKENDS:
                self.options["model_path"] = model_path
                self.origins["generator.options.model_path"] = "generator.model_path"
            else:
                self.warn("generator.model_path", f"unused by generator.backend {backend!r}")
        if generator.get("revision") is not None:
            self.warn("generator.revision", "models load from a local directory only (no hub); ignored")
        if generator.get("trust_remote_code"):
            self.warn("generator.trust_remote_code", "no model code is ever loaded from a model directory; ignored")
        self.engine(_section(generator, "engine", "generator.engine"))
        self.pipeline(_section(generator, "pipeline", "generator.pipeline"), model_path)
        known = frozenset({"model_path", "revision", "trust_remote_code", "engine", "pipeline"})
        self.passthrough(generator, known, "generator")
        return str(backend)

    def engine(self, engine: dict[str, Any]) -> None:
        offload = _section(engine, "offload", "generator.engine.offload")
        modules = {name: bool(offload.get(name, True)) for name in _OFFLOAD_MODULES}
        self.options["enable_model_cpu_offload"] = any(modules.values())
        self.origins["generator.options.enable_model_cpu_offload"] = "generator.engine.offload"
        if len(set(modules.values())) > 1:
            on = ", ".join(name for name, value in modules.items() if value)
            self.warn(
                "generator.engine.offload",
                f"CPU offload is one switch here (the whole pipeline): on, because {on} asked for it",
            )
        for key in _OFFLOAD_OTHER:
            if offload.get(key):
                self.warn(f"generator.engine.offload.{key}", "no such setting here; ignored")
        num_gpus = engine.get("num_gpus", 1)
        if num_gpus != 1:
            self.warn(
                "generator.engine.num_gpus",
                f"{num_gpus}: one model is never split over GPUs here; each worker process has one GPU "
                "(streaming.pool.num_workers / pool.gpu_ids)",
            )
        if engine.get("execution_backend", "mp") != "mp":
            self.warn("generator.engine.execution_backend", "workers are local processes (mp) here; ignored")
        for key, value in _leaves(engine.get("parallelism"), "generator.engine.parallelism"):
            if "parallelism" in engine:
                self.warn(key, f"{value!r}: no tensor/sequence parallelism here; ignored")
        compile_ = _section(engine, "compile", "generator.engine.compile")
        for key, value in compile_.items():
            self.warn(f"generator.engine.compile.{key}", f"{value!r}: models run eagerly (no torch.compile); ignored")
        quantization = _section(engine, "quantization", "generator.engine.quantization")
        for key, value in quantization.items():
            if value is not None:
                self.warn(
                    f"generator.engine.quantization.{key}",
                    f"{value!r}: weights run in generator.options.dtype (bfloat16 on GPU); expect more memory",
                )
        for key in ("enable_stage_verification", "use_fsdp_inference", "disable_autocast"):
            if key in engine:
                self.warn(f"generator.engine.{key}", f"{engine[key]!r}: no such setting here; ignored")
        unknown = engine.keys() - {
            "offload",
            "num_gpus",
            "execution_backend",
            "parallelism",
            "compile",
            "quantization",
            "enable_stage_verification",
            "use_fsdp_inference",
            "disable_autocast",
        }
        for key in sorted(unknown):
            raise _Fatal(f"generator.engine.{key}", "unknown key (not in the original's EngineConfig)")

    def pipeline(self, pipeline: dict[str, Any], model_path: Any) -> None:
        workload = pipeline.get("workload_type")
        if workload not in (None, "t2v", "i2v"):
            raise _Fatal(
                "generator.pipeline.workload_type",
                f"{workload!r}: this server streams video (t2v; i2v through a session's initial image)",
            )
        for key in ("preset", "preset_version"):
            if pipeline.get(key) is not None:
                self.warn(
                    f"generator.pipeline.{key}", f"{pipeline[key]!r}: the model directory's own pipeline runs; ignored"
                )
        if pipeline.get("vae_tiling") is not None:
            self.options["enable_vae_tiling"] = bool(pipeline["vae_tiling"])
            self.origins["generator.options.enable_vae_tiling"] = "generator.pipeline.vae_tiling"
        components = _section(pipeline, "components", "generator.pipeline.components")
        for key, value in components.items():
            if value is None or (key == "config_root" and value == model_path):
                continue
            raise _Fatal(
                f"generator.pipeline.components.{key}",
                f"{value!r}: every component loads from generator.model_path here; ignoring it would run a "
                "different model (make a directory holding the pipeline you want and point model_path at it)",
            )
        for section in ("preset_overrides", "experimental"):
            for key, value in _leaves(pipeline.get(section), f"generator.pipeline.{section}"):
                if section in pipeline:
                    self.warn(key, f"{value!r}: no such stage or setting here (one-stage pipeline); ignored")
        unknown = pipeline.keys() - {
            "workload_type",
            "preset",
            "preset_version",
            "components",
            "vae_tiling",
            "preset_overrides",
            "experimental",
        }
        for key in sorted(unknown):
            raise _Fatal(f"generator.pipeline.{key}", "unknown key (not in the original's PipelineSelection)")

    # streaming ---------------------------------------------------------------------------------

    def streaming(self, backend: str) -> None:
        if "streaming" not in self.raw or self.raw["streaming"] is None:
            raise _Fatal(
                "streaming",
                "absent: the original then serves its REST video API (/v1/videos), which this server does not "
                "have; add a streaming: block to stream",
            )
        streaming = _section(self.raw, "streaming", "streaming")
        self.put(
            "streaming.session_timeout_seconds",
            streaming.get("session_timeout_seconds", 300),
            "streaming.session_timeout_seconds",
        )
        self.put(
            "streaming.generation_segment_cap",
            streaming.get("generation_segment_cap", ORIGINAL_SEGMENT_CAP),
            "streaming.generation_segment_cap",
        )
        mode = streaming.get("stream_mode", "av_fmp4")
        if mode != "av_fmp4":
            raise _Fatal(
                "streaming.stream_mode",
                f"{mode!r}: video goes out as fMP4 (WebSocket) or RTP (WebRTC) only; a client expecting "
                "JPEG frames would get none",
            )
        self.warmup(_section(streaming, "warmup", "streaming.warmup"))
        self.pool(_section(streaming, "pool", "streaming.pool"), backend)
        self.prompt(_section(streaming, "prompt", "streaming.prompt"))
        safety = _section(streaming, "safety", "streaming.safety")
        for key in ("enabled", "classifier_path"):
            if key in safety:
                self.put(f"streaming.safety.{key}", safety[key], f"streaming.safety.{key}")
        self.passthrough(safety, frozenset({"enabled", "classifier_path"}), "streaming.safety")
        known = frozenset(
            {"session_timeout_seconds", "generation_segment_cap", "stream_mode", "warmup", "pool", "prompt", "safety"}
        )
        self.passthrough(streaming, known, "streaming")

    def warmup(self, warmup: dict[str, Any]) -> None:
        self.put("pool.warmup", warmup.get("enabled", True), "streaming.warmup.enabled")
        self.put(
            "pool.boot_timeout_seconds",
            warmup.get("timeout_seconds", ORIGINAL_WARMUP_TIMEOUT_S),
            "streaming.warmup.timeout_seconds",
        )
        if "prompt" in warmup:
            self.warn("streaming.warmup.prompt", "the warm-up uses its own fixed prompt; ignored (warm-up only)")
        for key in sorted(warmup.keys() - {"enabled", "timeout_seconds", "prompt"}):
            raise _Fatal(f"streaming.warmup.{key}", "unknown key (not in the original's WarmupConfig)")

    def pool(self, pool: dict[str, Any], backend: str) -> None:
        self.put("pool.backend", "subprocess", "streaming.pool")
        self.put("pool.num_workers", pool.get("num_workers") or 1, "streaming.pool.num_workers")
        conditioning = pool.get("conditioning_num_frames", ORIGINAL_CONDITIONING_FRAMES)
        if backend in _MODEL_BACKENDS:
            self.options["conditioning_frames"] = conditioning
            self.origins["generator.options.conditioning_frames"] = "streaming.pool.conditioning_num_frames"
        elif "conditioning_num_frames" in pool:
            self.warn("streaming.pool.conditioning_num_frames", f"unused by generator.backend {backend!r}")
        offset = pool.get("conditioning_end_offset", 0)
        if offset != 0:
            raise _Fatal(
                "streaming.pool.conditioning_end_offset",
                f"{offset!r}: a segment always continues from the very last frames of the one before; "
                "ignoring the offset would change what the next segment continues from",
            )
        if pool.get("enable_audio_reencode", True) is not True:
            self.warn(
                "streaming.pool.enable_audio_reencode",
                f"{pool['enable_audio_reencode']!r}: audio is always encoded with the video (AAC in fMP4, Opus on "
                "WebRTC); ignored",
            )
        for key in sorted(
            pool.keys() - {"num_workers", "conditioning_num_frames", "conditioning_end_offset", "enable_audio_reencode"}
        ):
            raise _Fatal(f"streaming.pool.{key}", "unknown key (not in the original's GpuPoolConfig)")

    def prompt(self, prompt: dict[str, Any]) -> None:
        provider = prompt.get("provider", "cerebras")
        if provider not in ORIGINAL_PROVIDERS:
            raise _Fatal("streaming.prompt.provider", f"{provider!r}: the original accepts cerebras or groq")
        model = prompt.get("model", ORIGINAL_PROMPT_MODEL)
        enabled = bool(prompt.get("enabled", False))
        providers = [{"kind": provider, "model": model}] if enabled else []
        self.put("streaming.prompt.providers", providers, "streaming.prompt.enabled/provider/model")
        self.put("streaming.prompt.model", model, "streaming.prompt.model")
        timeout_ms = prompt.get("timeout_ms", ORIGINAL_PROMPT_TIMEOUT_MS)
        self.put("streaming.prompt.timeout_ms", timeout_ms, "streaming.prompt.timeout_ms")
        # One call with the original's timeout must not be cut short by our whole-chain deadline.
        self.put("streaming.prompt.deadline_ms", timeout_ms, "streaming.prompt.timeout_ms")
        if prompt.get("system_prompt_dir") is not None:
            self.put(
                "streaming.prompt.system_prompt_dir", prompt["system_prompt_dir"], "streaming.prompt.system_prompt_dir"
            )
        known = frozenset({"enabled", "provider", "model", "timeout_ms", "system_prompt_dir"})
        self.passthrough(prompt, known, "streaming.prompt")

    # default_request ---------------------------------------------------------------------------

    def default_request(self, backend: str) -> None:
        request = _section(self.raw, "default_request", "default_request")
        prompt = request.get("prompt")
        if isinstance(prompt, list):
            if len(prompt) != 1:
                raise _Fatal("default_request.prompt", "a list of prompts: one session streams one prompt at a time")
            prompt = prompt[0]
        if prompt is not None:
            self.put("default_request.prompt", prompt, "default_request.prompt")
        if request.get("negative_prompt") is not None:
            self.put("default_request.negative_prompt", request["negative_prompt"], "default_request.negative_prompt")
        self.sampling(_section(request, "sampling", "default_request.sampling"), backend)
        for section in ("inputs", "runtime", "output", "stage_overrides", "state", "plan", "extensions"):
            if request.get(section) in (None, {}):
                continue
            for key, value in _leaves(request[section], f"default_request.{section}"):
                self.warn(key, f"{value!r}: the streaming server takes this from each session, not the config; ignored")
        known = frozenset(
            {
                "prompt",
                "negative_prompt",
                "sampling",
                "inputs",
                "runtime",
                "output",
                "stage_overrides",
                "state",
                "plan",
                "extensions",
            }
        )
        self.passthrough(request, known, "default_request")

    def sampling(self, sampling: dict[str, Any], backend: str) -> None:
        for key in ("width", "height", "fps", "num_inference_steps", "guidance_scale", "seed"):
            if key in sampling:
                self.put(f"default_request.sampling.{key}", sampling[key], f"default_request.sampling.{key}")
        if "num_frames" in sampling:
            self.num_frames(sampling["num_frames"], backend)
        if sampling.get("num_videos_per_prompt", 1) != 1:
            raise _Fatal("default_request.sampling.num_videos_per_prompt", "a session streams one video")
        mapped = {
            "width",
            "height",
            "fps",
            "num_inference_steps",
            "guidance_scale",
            "seed",
            "num_frames",
            "num_videos_per_prompt",
        }
        for key in sorted(sampling.keys() - _ORIGINAL_SAMPLING_KEYS):
            raise _Fatal(f"default_request.sampling.{key}", "unknown key (not in the original's SamplingConfig)")
        for key in sorted(sampling.keys() - mapped):
            self.warn(
                f"default_request.sampling.{key}",
                f"{sampling[key]!r}: not used by the original's streaming server either; ignored "
                "(model settings live in generator.options)",
            )

    def num_frames(self, frames: Any, backend: str) -> None:
        origin = "default_request.sampling.num_frames"
        conditioning = self.options.get("conditioning_frames", 0) if backend in _MODEL_BACKENDS else 0
        if not isinstance(frames, int) or isinstance(frames, bool):
            self.put("default_request.sampling.num_frames", frames, origin)  # let validation name it
            return
        if frames <= conditioning:
            raise _Fatal(origin, f"{frames}: must exceed streaming.pool.conditioning_num_frames ({conditioning})")
        if conditioning:
            origin += f" minus streaming.pool.conditioning_num_frames ({frames} - {conditioning})"
        self.put("default_request.sampling.num_frames", frames - conditioning, origin)

    # limits ------------------------------------------------------------------------------------

    def raise_limits(self) -> None:
        """Lift our client caps (the original has none) to the file's own defaults, unless it sets them."""
        sampling = self.out.get("default_request", {}).get("sampling", {})
        limits = self.raw.get("limits")
        written: Mapping[str, Any] = limits if isinstance(limits, Mapping) else {}
        pairs = (
            ("width", "max_width"),
            ("height", "max_height"),
            ("num_frames", "max_num_frames"),
            ("num_inference_steps", "max_inference_steps"),
        )
        defaults = ServiceConfig().limits
        for key, limit in pairs:
            value = sampling.get(key)
            if isinstance(value, int) and limit not in written and value > getattr(defaults, limit):
                self.put(f"limits.{limit}", value, f"default_request.sampling.{key}")
                self.warn(
                    f"default_request.sampling.{key}",
                    f"{value} is above our default limits.{limit} ({getattr(defaults, limit)}): "
                    f"limits.{limit} raised to {value} (set limits.{limit} to choose)",
                )


def _backend_for(model_path: Any) -> str:
    """diffusers for an LTX-Video directory, else diffusers_ltx2 (the original's streaming model)."""
    try:
        index = yaml.safe_load((Path(str(model_path)) / "model_index.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return "diffusers_ltx2"
    name = index.get("_class_name", "") if isinstance(index, Mapping) else ""
    return (
        "diffusers"
        if isinstance(name, str) and name.startswith("LTX") and not name.startswith("LTX2")
        else "diffusers_ltx2"
    )


def translate_original(raw: Mapping[str, Any]) -> tuple[dict[str, Any], list[Unhonoured], dict[str, str]]:
    """Our config mapping for an original-layout ``raw``, the keys not honoured, and our key -> origin.

    Raises ConfigError (without a file name) for a key whose being ignored would change behaviour.
    """
    try:
        return _Translator(raw).run()
    except _Fatal as exc:
        raise ConfigError(f"{exc.key}: {exc.reason}") from None


# -- loading -----------------------------------------------------------------------------------------


def _origin_of(key: str, origins: Mapping[str, str]) -> str | None:
    parts = key.split(".")
    for length in range(len(parts), 0, -1):
        origin = origins.get(".".join(parts[:length]))
        if origin is not None:
            return origin
    return None


def origin_hints(message: str, origins: Mapping[str, str]) -> list[str]:
    """For each translated key ``message`` names, where in the original-layout file it came from."""
    return [
        f"  ({ours} comes from the file's {origin})"
        for ours, origin in sorted(origins.items(), key=lambda item: -len(item[0]))
        if ours in message and ours != origin
    ]


def _format_error(path: Path, exc: ValidationError, origins: Mapping[str, str]) -> str:
    lines = [f"{path}: invalid configuration (original FastVideo serve layout, translated)"]
    for error in exc.errors():
        key = ".".join(str(part) for part in error["loc"]) or "<root>"
        origin = _origin_of(key, origins)
        named = key if origin in (None, key) else f"{key} (from the file's {origin})"
        lines.append(f"  {named}: {error['msg']}")
    return "\n".join(lines)


def load_any_config(path: str | Path) -> LoadedConfig:
    """Read ``path`` in our layout or the original's (detected), validate it, and say what was not honoured.

    Our layout goes through :func:`rtc_server.config.load_config` unchanged. ConfigError names the file
    and the key; for a translated key, the file's own key as well.
    """
    path = Path(path)
    raw = read_config_mapping(path)
    if not is_original_layout(raw):
        return LoadedConfig(config=load_config(path), layout="ours")
    try:
        translated, warnings, origins = translate_original(raw)
    except ConfigError as exc:
        raise ConfigError(f"{path}: original FastVideo serve layout: {exc}") from None
    try:
        config = ServiceConfig.model_validate(translated)
    except ValidationError as exc:
        raise ConfigError(_format_error(path, exc, origins)) from exc
    return LoadedConfig(config=config, layout="original", warnings=tuple(warnings), origins=origins)
