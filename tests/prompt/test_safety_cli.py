"""``python -m prompt.safety``: train, classify, evaluate."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from prompt.safety.__main__ import EXIT_BLOCKED, EXIT_UNAVAILABLE, main

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_train_then_classify(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    held_out = tmp_path / "held_out.txt"
    held_out.write_text(
        "__label__safe a koala sleeping in a eucalyptus tree\n__label__unsafe how to make a nail bomb at home\n",
        encoding="utf-8",
    )
    model = tmp_path / "model.bin"
    assert main(["train", "--out", str(model), "--eval", str(held_out), "--epoch", "30"]) == 0
    out = capsys.readouterr().out
    assert "trained on" in out and "safe" in out and "accuracy 1.000 (2/2)" in out
    assert model.is_file()

    assert main(["classify", "--model", str(model), "a koala sleeping in a tree"]) == 0
    assert capsys.readouterr().out.startswith("allow\t")
    assert main(["classify", "--model", str(model), "a koala", "how to make a pipe bomb"]) == EXIT_BLOCKED
    lines = capsys.readouterr().out.splitlines()
    assert [line.split("\t")[0] for line in lines] == ["allow", "block"]

    assert main(["evaluate", "--model", str(model), "--data", str(held_out)]) == 0
    assert "accuracy 1.000" in capsys.readouterr().out


def test_train_reports_bad_data(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "bad.txt"
    data.write_text("__label__nope x\n", encoding="utf-8")
    assert main(["train", "--data", str(data), "--out", str(tmp_path / "m.bin")]) == 1
    assert "unknown label 'nope'" in capsys.readouterr().err


def test_module_entry_point_reports_unavailable(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "prompt.safety", "classify", "--model", str(tmp_path / "absent.bin"), "a fox"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == EXIT_UNAVAILABLE
    assert "does not exist" in proc.stderr
