"""The tiny LTX-2 pipeline directory, built once per test session and shared by every module that needs it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

SESSION_DIR_NAME = "tiny-ltx2-session"


def tiny_ltx2_dir(factory: pytest.TempPathFactory) -> Path:
    """The session's tiny LTX-2 directory under pytest's base temp dir, built on first use (offline)."""
    path = factory.getbasetemp() / SESSION_DIR_NAME
    if (path / "model_index.json").is_file():
        return path
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before diffusers is imported; pytest's temp dir is per session
    from gpu.tiny_ltx2 import build_tiny_ltx2_pipeline_dir

    building = factory.mktemp("tiny-ltx2-building")
    build_tiny_ltx2_pipeline_dir(building)
    building.rename(path)  # whole or absent: an interrupted build is never taken for a finished one
    return path
