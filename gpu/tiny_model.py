"""A tiny, randomly initialised LTX-Video pipeline, built offline, for tests and CPU machines.

``python -m gpu.tiny_model OUT_DIR`` writes a directory that ``LTXConditionPipeline.from_pretrained``
loads with no network: a Unigram tokenizer over a fixed vocabulary (built in memory with the
``tokenizers`` library, wrapped as a ``T5TokenizerFast``), a one-layer T5 encoder, a one-block LTX
transformer and an LTX VAE with the real model's compression ratios (32x spatial, 8x temporal, so
frame sizes are multiples of 32 and lengths 8n+1, as with the real weights), and the scheduler.
Weights come from a fixed torch seed, so two builds are identical. The video it makes is noise
shaped by random weights; what it exercises is the exact code path of the real model.
"""

from __future__ import annotations

import argparse
import string
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["TINY_MODEL_SEED", "build_tiny_pipeline", "build_tiny_pipeline_dir", "main"]

TINY_MODEL_SEED = 0
MAX_SEQUENCE_LENGTH = 256  # tokens; the LTX pipeline's default max_sequence_length

TEXT_WIDTH = 32  # T5 d_model == transformer caption_channels
TEXT_HEADS = 4
TEXT_HEAD_DIM = 8
TEXT_FF_WIDTH = 64
TRANSFORMER_HEADS = 4
TRANSFORMER_HEAD_DIM = 8  # inner width 32
LATENT_CHANNELS = 8
VAE_WIDTH = 16  # channels in every VAE block
VAE_PATCH_SIZE = 4  # 4 * 2**3 = 32x spatial compression, as LTX-Video
VAE_SCALING = (True, True, True, False)  # three 2x spatio-temporal stages: 8x temporal compression

# Whole words get a better score than spelling them out; any ASCII prompt still tokenizes.
_WORDS = (
    "a", "an", "the", "of", "and", "or", "in", "on", "at", "to", "with", "from", "through", "over",
    "under", "by", "is", "are", "red", "orange", "yellow", "green", "blue", "purple", "pink",
    "black", "white", "grey", "golden", "silver", "fox", "cat", "dog", "bird", "fish", "horse",
    "person", "people", "man", "woman", "child", "car", "train", "boat", "city", "street",
    "forest", "mountain", "river", "lake", "sea", "ocean", "beach", "sky", "cloud", "clouds",
    "sun", "moon", "star", "stars", "night", "day", "morning", "evening", "snow", "rain", "fire",
    "water", "light", "dark", "running", "walking", "flying", "swimming", "dancing", "slowly",
    "fast", "camera", "view", "close", "wide", "shot", "scene", "landscape", "fresh", "old", "new",
    "small", "large", "bright", "soft",
)
_SPECIAL_TOKENS = ("<pad>", "</s>", "<unk>")  # T5 order: pad=0, eos=1, unk=2
_WORD_SCORE = -2.0
_CHARACTER_SCORE = -8.0
_SPACE_PIECE = "\u2581"  # SentencePiece's word-boundary marker


def _vocabulary() -> list[tuple[str, float]]:
    pieces: list[tuple[str, float]] = [(token, 0.0) for token in _SPECIAL_TOKENS]
    pieces.append((_SPACE_PIECE, _WORD_SCORE))
    pieces.extend((_SPACE_PIECE + word, _WORD_SCORE) for word in dict.fromkeys(_WORDS))
    characters = string.ascii_letters + string.digits + string.punctuation
    pieces.extend((character, _CHARACTER_SCORE) for character in characters)
    return pieces


def build_tiny_pipeline(seed: int = TINY_MODEL_SEED) -> Any:
    """An in-memory ``LTXConditionPipeline`` with tiny random weights drawn from ``seed``."""
    import diffusers
    import torch
    from transformers import T5Config, T5EncoderModel, T5TokenizerFast  # type: ignore[attr-defined]

    models: Any = diffusers  # its constructors are untyped
    vocabulary = _vocabulary()
    # transformers 5 builds T5TokenizerFast on a tokenizers Unigram model over exactly these pieces.
    tokenizer = T5TokenizerFast(vocab=vocabulary, extra_ids=0, model_max_length=MAX_SEQUENCE_LENGTH)
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        text_encoder = T5EncoderModel(
            T5Config(
                vocab_size=len(vocabulary),
                d_model=TEXT_WIDTH,
                d_kv=TEXT_HEAD_DIM,
                d_ff=TEXT_FF_WIDTH,
                num_layers=1,
                num_heads=TEXT_HEADS,
                feed_forward_proj="gated-gelu",
                is_encoder_decoder=False,
                use_cache=False,
            )
        )
        transformer = models.LTXVideoTransformer3DModel(
            in_channels=LATENT_CHANNELS,
            out_channels=LATENT_CHANNELS,
            patch_size=1,
            patch_size_t=1,
            num_attention_heads=TRANSFORMER_HEADS,
            attention_head_dim=TRANSFORMER_HEAD_DIM,
            cross_attention_dim=TRANSFORMER_HEADS * TRANSFORMER_HEAD_DIM,
            num_layers=1,
            caption_channels=TEXT_WIDTH,
        )
        blocks = len(VAE_SCALING)
        vae = models.AutoencoderKLLTXVideo(
            in_channels=3,
            out_channels=3,
            latent_channels=LATENT_CHANNELS,
            block_out_channels=(VAE_WIDTH,) * blocks,
            decoder_block_out_channels=(VAE_WIDTH,) * blocks,
            layers_per_block=(1,) * (blocks + 1),
            decoder_layers_per_block=(1,) * (blocks + 1),
            spatio_temporal_scaling=VAE_SCALING,
            decoder_spatio_temporal_scaling=VAE_SCALING,
            decoder_inject_noise=(False,) * (blocks + 1),
            upsample_residual=(False,) * blocks,
            upsample_factor=(1,) * blocks,
            timestep_conditioning=True,  # as LTX-Video 0.9.5+: decode_timestep and decode_noise_scale apply
            patch_size=VAE_PATCH_SIZE,
            patch_size_t=1,
        )
    finally:
        torch.random.set_rng_state(generator_state)  # leave the caller's random stream as it was
    return models.LTXConditionPipeline(
        scheduler=models.FlowMatchEulerDiscreteScheduler(),
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        transformer=transformer,
    )


def save_pipeline_dir(pipeline: Any, out_dir: Path) -> Path:
    """Save ``pipeline`` under ``out_dir`` (created if missing) and return ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    pipeline.save_pretrained(out_dir, safe_serialization=True)
    return out_dir


def build_tiny_pipeline_dir(out_dir: Path, *, seed: int = TINY_MODEL_SEED) -> Path:
    """Save the tiny pipeline under ``out_dir`` (created if missing) and return ``out_dir``."""
    return save_pipeline_dir(build_tiny_pipeline(seed), out_dir)


def run_builder_cli(
    argv: list[str] | None, *, prog: str, description: str, label: str, build_dir: Callable[..., Path]
) -> int:
    """``prog OUT_DIR [--seed N]``: write the pipeline ``build_dir`` makes and say where and how big."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("out_dir", type=Path, help="directory to write (created if missing)")
    parser.add_argument("--seed", type=int, default=TINY_MODEL_SEED, help="torch seed for the weights")
    args = parser.parse_args(argv)
    path = build_dir(args.out_dir, seed=args.seed)
    size = sum(file.stat().st_size for file in path.rglob("*") if file.is_file())
    print(f"wrote a tiny {label} pipeline to {path} ({size / 1e6:.1f} MB)")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_builder_cli(
        argv,
        prog="python -m gpu.tiny_model",
        description="Write a tiny random LTX-Video pipeline directory.",
        label="LTX",
        build_dir=build_tiny_pipeline_dir,
    )


if __name__ == "__main__":
    sys.exit(main())
