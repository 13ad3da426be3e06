"""The tiny LTX pipeline: built offline, deterministic, loadable by LTXConditionPipeline.from_pretrained."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gpu.tiny_model import build_tiny_pipeline_dir, main

MAX_TINY_MODEL_BYTES = 8_000_000


@pytest.fixture(scope="module")
def offline() -> Iterator[Any]:
    """HF_HUB_OFFLINE=1 before diffusers is imported (the diffusers extra is part of the test install)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_HUB_OFFLINE", "1")
        import diffusers

        yield diffusers


@pytest.fixture(scope="module")
def tiny_dir(offline: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_pipeline_dir(tmp_path_factory.mktemp("tiny-ltx"))


def _digests(root: Path) -> dict[str, str]:
    return {
        str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


def test_directory_holds_every_component_and_is_small(tiny_dir: Path) -> None:
    names = {path.name for path in tiny_dir.iterdir()}
    assert {"model_index.json", "scheduler", "text_encoder", "tokenizer", "transformer", "vae"} <= names
    assert sum(path.stat().st_size for path in tiny_dir.rglob("*") if path.is_file()) < MAX_TINY_MODEL_BYTES


def test_ltx_condition_pipeline_loads_it_with_ltx_ratios(offline: Any, tiny_dir: Path) -> None:
    pipeline = offline.LTXConditionPipeline.from_pretrained(str(tiny_dir), local_files_only=True)
    assert pipeline.vae_spatial_compression_ratio == 32
    assert pipeline.vae_temporal_compression_ratio == 8
    assert pipeline.transformer.config.in_channels == pipeline.vae.config.latent_channels
    tokens = pipeline.tokenizer("a red fox running through fresh snow, zzz!").input_ids
    assert tokens[-1] == pipeline.tokenizer.eos_token_id
    assert pipeline.tokenizer.unk_token_id not in tokens  # every ASCII prompt spells out


def test_builds_are_identical(tiny_dir: Path, tmp_path: Path) -> None:
    again = build_tiny_pipeline_dir(tmp_path / "again")
    assert _digests(again) == _digests(tiny_dir)


def test_command_line_writes_the_directory(offline: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out_dir = tmp_path / "cli" / "model"
    assert main([str(out_dir)]) == 0
    assert (out_dir / "model_index.json").is_file()
    assert str(out_dir) in capsys.readouterr().out
