"""A tiny, randomly initialised LTX-2 pipeline (video and audio), built offline, for tests and CPU machines.

``python -m gpu.tiny_ltx2 OUT_DIR`` writes a directory that ``LTX2ConditionPipeline.from_pretrained``
loads with no network, every component built from a small config the way diffusers' own pipeline
tests build their dummies (tests/pipelines/ltx2/), except that nothing is downloaded:

- tokenizer: a ``GemmaTokenizer`` (BPE with byte fallback, as Gemma's) over a fixed vocabulary of
  bytes, characters and common words, built in memory with the ``tokenizers`` library;
- text encoder: a two-layer ``Gemma3ForConditionalGeneration`` (with a one-layer SigLIP vision tower,
  which the pipeline never runs) and the text connectors;
- transformer: a two-layer ``LTX2VideoTransformer3DModel`` (video and audio streams);
- video VAE: ``AutoencoderKLLTX2Video`` with the real model's compression (32x spatial, 8x temporal:
  frame sizes are multiples of 32 and clip lengths 8n+1, as with the real weights);
- audio VAE: ``AutoencoderKLLTX2Audio`` at the real model's 16 kHz mel rate and 4x latent compression
  (25 latent frames per second), and ``LTX2Vocoder`` up to 24 kHz stereo, as LTX-2;
- the flow-matching scheduler.

Weights come from a fixed torch seed, so two builds are identical. The video and sound it makes are
noise shaped by random weights; what it exercises is the exact code path of the real model.
"""

from __future__ import annotations

import string
import sys
from pathlib import Path
from typing import Any

from gpu.tiny_model import _WORDS, TINY_MODEL_SEED, run_builder_cli, save_pipeline_dir

__all__ = [
    "AUDIO_SAMPLE_RATE",
    "MAX_SEQUENCE_LENGTH",
    "TINY_MODEL_SEED",
    "build_tiny_ltx2_pipeline",
    "build_tiny_ltx2_pipeline_dir",
    "main",
]

MAX_SEQUENCE_LENGTH = 128  # tokens the tokenizer pads to by default (the real one: 1024)

TEXT_WIDTH = 32  # Gemma hidden size == connectors' caption_channels
TEXT_LAYERS = 2
TEXT_HEADS = 4
TEXT_KV_HEADS = 2
TEXT_HEAD_DIM = 8
TEXT_FF_WIDTH = 64
VISION_WIDTH = 16
VISION_IMAGE_PX = 28  # two 14 px patches a side
VISION_PATCH_PX = 14
TRANSFORMER_LAYERS = 2
TRANSFORMER_HEADS = 2
TRANSFORMER_HEAD_DIM = 8  # video inner width 16
AUDIO_HEADS = 2
AUDIO_HEAD_DIM = 4  # audio inner width 8
LATENT_CHANNELS = 8  # video latent channels
VAE_WIDTH = 16  # channels in every video VAE block
VAE_PATCH_SIZE = 4  # 4 * 2**3 = 32x spatial, as LTX-2
VAE_STAGES = 3  # three 2x spatio-temporal stages: 8x temporal, as LTX-2
AUDIO_LATENT_CHANNELS = 2
AUDIO_MEL_BINS = 16  # 4 latent mel bins after the VAE's fixed 4x
AUDIO_VAE_SAMPLE_RATE = 16_000  # Hz of the mel spectrogram's audio, as LTX-2
AUDIO_HOP = 160  # samples per mel frame: 100 mel frames/s, 25 latent frames/s
AUDIO_SAMPLE_RATE = 24_000  # Hz the vocoder writes, as LTX-2
VOCODER_UPSAMPLE = (6, 5, 8)  # 240 samples per mel frame: 100 mel frames/s -> 24 kHz
VOCODER_WIDTH = 32

_SPECIAL_TOKENS = ("<pad>", "<eos>", "<bos>", "<unk>", "<mask>")  # Gemma's order: pad=0, eos=1, bos=2
_SPACE_PIECE = "\u2581"  # the normalizer turns spaces into this


def _vocabulary() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Token ids and BPE merges: special tokens, the 256 byte-fallback tokens, characters, then words.

    Every word is reachable by merging left to right from its first character, with and without a
    leading word-boundary marker; anything else falls back to characters or bytes.
    """
    tokens: list[str] = list(_SPECIAL_TOKENS)
    tokens.extend(f"<0x{byte:02X}>" for byte in range(256))
    tokens.extend(string.ascii_letters + string.digits + string.punctuation + _SPACE_PIECE)
    merges: list[tuple[str, str]] = []
    known = set(tokens)
    for word in dict.fromkeys(_WORDS):
        for start in (_SPACE_PIECE + word[0], word[0]):
            piece = start
            if start not in known:
                merges.append((_SPACE_PIECE, word[0]))
                tokens.append(start)
                known.add(start)
            for character in word[1:]:
                longer = piece + character
                if longer not in known:
                    merges.append((piece, character))
                    tokens.append(longer)
                    known.add(longer)
                piece = longer
    return {token: index for index, token in enumerate(tokens)}, merges


def _tokenizer() -> Any:
    from transformers import GemmaTokenizer  # type: ignore[attr-defined]

    vocab, merges = _vocabulary()
    tokenizer = GemmaTokenizer(vocab=vocab, merges=merges, model_max_length=MAX_SEQUENCE_LENGTH)  # type: ignore[arg-type]
    tokenizer.padding_side = "left"  # as Gemma's: the pipeline pads prompts on the left
    return tokenizer


def _text_encoder(vocab_size: int) -> Any:
    from transformers import (  # type: ignore[attr-defined]
        Gemma3Config,
        Gemma3ForConditionalGeneration,
        Gemma3TextConfig,
        SiglipVisionConfig,
    )

    text = Gemma3TextConfig(
        vocab_size=vocab_size,
        hidden_size=TEXT_WIDTH,
        intermediate_size=TEXT_FF_WIDTH,
        num_hidden_layers=TEXT_LAYERS,
        num_attention_heads=TEXT_HEADS,
        num_key_value_heads=TEXT_KV_HEADS,
        head_dim=TEXT_HEAD_DIM,
        max_position_embeddings=MAX_SEQUENCE_LENGTH * 8,
        sliding_window=MAX_SEQUENCE_LENGTH,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=2,
    )
    vision = SiglipVisionConfig(
        hidden_size=VISION_WIDTH,
        intermediate_size=VISION_WIDTH * 2,
        num_hidden_layers=1,
        num_attention_heads=2,
        image_size=VISION_IMAGE_PX,
        patch_size=VISION_PATCH_PX,
    )
    config = Gemma3Config(
        text_config=text.to_dict(),
        vision_config=vision.to_dict(),
        mm_tokens_per_image=(VISION_IMAGE_PX // VISION_PATCH_PX) ** 2,
        image_token_index=vocab_size - 1,
    )
    return Gemma3ForConditionalGeneration(config).eval()


def build_tiny_ltx2_pipeline(seed: int = TINY_MODEL_SEED) -> Any:
    """An in-memory ``LTX2ConditionPipeline`` with tiny random weights drawn from ``seed``."""
    import diffusers
    import torch
    from diffusers.pipelines.ltx2 import LTX2TextConnectors
    from diffusers.pipelines.ltx2.vocoder import LTX2Vocoder

    models: Any = diffusers  # its constructors are untyped
    tokenizer = _tokenizer()
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        text_encoder = _text_encoder(len(tokenizer))
        connectors = LTX2TextConnectors(
            caption_channels=TEXT_WIDTH,
            text_proj_in_factor=TEXT_LAYERS + 1,  # every hidden state, embeddings included, as the real one
            video_connector_num_attention_heads=4,
            video_connector_attention_head_dim=8,
            video_connector_num_layers=1,
            video_connector_num_learnable_registers=None,
            audio_connector_num_attention_heads=4,
            audio_connector_attention_head_dim=8,
            audio_connector_num_layers=1,
            audio_connector_num_learnable_registers=None,
            connector_rope_base_seq_len=32,
            rope_theta=10000.0,
            rope_double_precision=False,
            causal_temporal_positioning=False,
            rope_type="split",
        )
        audio_features = AUDIO_LATENT_CHANNELS * (AUDIO_MEL_BINS // 4)  # a packed audio token
        transformer = models.LTX2VideoTransformer3DModel(
            in_channels=LATENT_CHANNELS,
            out_channels=LATENT_CHANNELS,
            patch_size=1,
            patch_size_t=1,
            num_attention_heads=TRANSFORMER_HEADS,
            attention_head_dim=TRANSFORMER_HEAD_DIM,
            cross_attention_dim=TRANSFORMER_HEADS * TRANSFORMER_HEAD_DIM,
            audio_in_channels=audio_features,
            audio_out_channels=audio_features,
            audio_num_attention_heads=AUDIO_HEADS,
            audio_attention_head_dim=AUDIO_HEAD_DIM,
            audio_cross_attention_dim=AUDIO_HEADS * AUDIO_HEAD_DIM,
            num_layers=TRANSFORMER_LAYERS,
            qk_norm="rms_norm_across_heads",
            caption_channels=TEXT_WIDTH,
            rope_double_precision=False,
            rope_type="split",
        )
        vae = models.AutoencoderKLLTX2Video(
            in_channels=3,
            out_channels=3,
            latent_channels=LATENT_CHANNELS,
            block_out_channels=(VAE_WIDTH,) * VAE_STAGES,
            down_block_types=("LTX2VideoDownBlock3D",) * VAE_STAGES,
            decoder_block_out_channels=(VAE_WIDTH,) * VAE_STAGES,
            layers_per_block=(1,) * (VAE_STAGES + 1),
            decoder_layers_per_block=(1,) * (VAE_STAGES + 1),
            spatio_temporal_scaling=(True,) * VAE_STAGES,
            decoder_spatio_temporal_scaling=(True,) * VAE_STAGES,
            decoder_inject_noise=(False,) * (VAE_STAGES + 1),
            downsample_type=("spatiotemporal",) * VAE_STAGES,
            upsample_type=("spatiotemporal",) * VAE_STAGES,
            upsample_residual=(False,) * VAE_STAGES,
            upsample_factor=(1,) * VAE_STAGES,
            timestep_conditioning=False,
            patch_size=VAE_PATCH_SIZE,
            patch_size_t=1,
            encoder_causal=True,
            decoder_causal=False,
            spatial_compression_ratio=VAE_PATCH_SIZE * 2**VAE_STAGES,
            temporal_compression_ratio=2**VAE_STAGES,
        )
        audio_vae = models.AutoencoderKLLTX2Audio(
            base_channels=audio_features,  # the latent statistics are per packed feature
            output_channels=2,
            ch_mult=(1, 2, 4),  # two 2x stages: the 4x time and mel compression the pipeline assumes
            num_res_blocks=1,
            attn_resolutions=None,
            in_channels=2,
            resolution=32,
            latent_channels=AUDIO_LATENT_CHANNELS,
            norm_type="pixel",
            causality_axis="height",
            dropout=0.0,
            mid_block_add_attention=False,
            sample_rate=AUDIO_VAE_SAMPLE_RATE,
            mel_hop_length=AUDIO_HOP,
            is_causal=True,
            mel_bins=AUDIO_MEL_BINS,
        )
        vocoder = LTX2Vocoder(
            in_channels=2 * AUDIO_MEL_BINS,
            hidden_channels=VOCODER_WIDTH,
            out_channels=2,
            upsample_kernel_sizes=[2 * factor for factor in VOCODER_UPSAMPLE],
            upsample_factors=list(VOCODER_UPSAMPLE),
            resnet_kernel_sizes=[3],
            resnet_dilations=[[1, 3, 5]],
            leaky_relu_negative_slope=0.1,
            output_sampling_rate=AUDIO_SAMPLE_RATE,
        )
    finally:
        torch.random.set_rng_state(generator_state)  # leave the caller's random stream as it was
    return models.LTX2ConditionPipeline(
        scheduler=models.FlowMatchEulerDiscreteScheduler(),
        vae=vae,
        audio_vae=audio_vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        connectors=connectors,
        transformer=transformer,
        vocoder=vocoder,
    )


def build_tiny_ltx2_pipeline_dir(out_dir: Path, *, seed: int = TINY_MODEL_SEED) -> Path:
    """Save the tiny LTX-2 pipeline under ``out_dir`` (created if missing) and return ``out_dir``."""
    return save_pipeline_dir(build_tiny_ltx2_pipeline(seed), out_dir)


def main(argv: list[str] | None = None) -> int:
    return run_builder_cli(
        argv,
        prog="python -m gpu.tiny_ltx2",
        description="Write a tiny random LTX-2 (video + audio) pipeline directory.",
        label="LTX-2",
        build_dir=build_tiny_ltx2_pipeline_dir,
    )


if __name__ == "__main__":
    sys.exit(main())
