"""The tiny LTX-2 pipeline: built offline, deterministic, loadable by LTX2ConditionPipeline.from_pretrained."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gpu.tiny_ltx2 import AUDIO_SAMPLE_RATE, main
from tests.gpu.tiny_ltx2_model import tiny_ltx2_dir

MAX_TINY_MODEL_BYTES = 8_000_000
COMPONENTS = {
    "model_index.json", "scheduler", "text_encoder", "tokenizer", "connectors",
    "transformer", "vae", "audio_vae", "vocoder",
}


@pytest.fixture(scope="module")
def offline() -> Iterator[Any]:
    """HF_HUB_OFFLINE=1 before diffusers is imported (the diffusers extra is part of the test install)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_HUB_OFFLINE", "1")
        import diffusers

        yield diffusers


@pytest.fixture(scope="module")
def tiny_dir(offline: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_ltx2_dir(tmp_path_factory)


def _digests(root: Path) -> dict[str, str]:
    return {
        str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


def test_directory_holds_every_component_and_is_small(tiny_dir: Path) -> None:
    assert COMPONENTS <= {path.name for path in tiny_dir.iterdir()}
    assert sum(path.stat().st_size for path in tiny_dir.rglob("*") if path.is_file()) < MAX_TINY_MODEL_BYTES


def test_ltx2_condition_pipeline_loads_it_with_the_real_models_ratios(offline: Any, tiny_dir: Path) -> None:
    pipeline = offline.LTX2ConditionPipeline.from_pretrained(str(tiny_dir), local_files_only=True)
    assert pipeline.vae_spatial_compression_ratio == 32
    assert pipeline.vae_temporal_compression_ratio == 8
    assert pipeline.transformer.config.in_channels == pipeline.vae.config.latent_channels
    assert type(pipeline.text_encoder).__name__ == "Gemma3ForConditionalGeneration"
    # 16 kHz mel at hop 160, 4x: 25 audio latent frames a second; the vocoder writes 24 kHz stereo.
    assert pipeline.audio_sampling_rate / pipeline.audio_hop_length / pipeline.audio_vae_temporal_compression_ratio == 25
    assert pipeline.vocoder.config.output_sampling_rate == AUDIO_SAMPLE_RATE
    assert pipeline.vocoder.config.out_channels == 2
    tokens = pipeline.tokenizer("a red fox running through fresh snow, zzz! \u00fc").input_ids
    assert pipeline.tokenizer.unk_token_id not in tokens  # words, characters, and bytes for the rest
    assert pipeline.tokenizer.padding_side == "left"


def test_builds_are_identical_and_the_command_line_writes_one(
    offline: Any, tiny_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "cli"
    assert main([str(out)]) == 0
    assert "wrote a tiny LTX-2 pipeline" in capsys.readouterr().out
    assert _digests(out) == _digests(tiny_dir)
