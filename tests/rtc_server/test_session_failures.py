"""What a client is told when its session fails: the right code, a useful message, no server paths."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from PIL import Image

from gpu.generator import GeneratorError, IncompatibleStateError, SegmentRequest
from gpu.pool import PoolError, PoolUnavailableError, WorkerFailedError
from gpu.synthetic import SyntheticGenerator
from rtc_server.init_image import InitImageError
from rtc_server.session_failures import REDACTED_PATH, SessionFailure, describe_failure, redact_paths
from rtc_server.session_start import ResumeRefused
from rtc_server.store.base import StoreError

# Anything that looks like a directory of this machine: /tmp, /home, /var, /opt, /usr, /root, /srv.
SERVER_PATH = re.compile(r"/(tmp|home|var|opt|usr|root|srv|work|etc)\b")


@pytest.fixture
def image_dir(tmp_path: Path) -> Path:
    """A directory shaped like the server's initial-image directory."""
    path = tmp_path / "rtc-init-images-q7x2" / "sub dir"
    path.mkdir(parents=True)
    return path


def generator_error(init_image_path: Path) -> GeneratorError:
    """What the synthetic generator raises for ``init_image_path``, from a real generate() call."""
    request = SegmentRequest(
        prompt="a fox", width=32, height=32, num_frames=1, num_inference_steps=1, init_image_path=str(init_image_path)
    )
    with pytest.raises(GeneratorError) as caught:
        SyntheticGenerator().generate(request)
    return caught.value


def assert_no_server_path(failure: SessionFailure | None, *leaked: Path) -> SessionFailure:
    assert failure is not None
    for path in leaked:
        assert str(path) not in failure.message
        assert path.name not in failure.message
    assert SERVER_PATH.search(failure.message) is None, failure.message
    return failure


def test_a_corrupt_init_image_is_reported_without_its_path(image_dir: Path) -> None:
    path = image_dir / "init-5f2c.png"
    path.write_bytes(b"\x89PNG not really")
    failure = assert_no_server_path(describe_failure(generator_error(path)), path, image_dir)
    assert (failure.code, failure.retryable) == ("internal_error", True)
    # PIL's text survives around the redacted paths.
    assert failure.message == (
        f"generation failed: cannot load init image '{REDACTED_PATH}': cannot identify image file '{REDACTED_PATH}'"
    )


def test_a_missing_init_image_is_reported_without_its_path(image_dir: Path) -> None:
    path = image_dir / "init-gone.png"
    failure = assert_no_server_path(describe_failure(generator_error(path)), path, image_dir)
    assert "No such file or directory" in failure.message and REDACTED_PATH in failure.message


def test_a_path_holding_a_quote_is_redacted_whole(tmp_path: Path) -> None:
    path = tmp_path / "it's here" / "init.png"
    failure = describe_failure(generator_error(path))
    assert_no_server_path(failure, path)
    assert failure is not None and "here" not in failure.message


def test_the_in_process_pool_wrapping_of_an_os_error_is_redacted(image_dir: Path) -> None:
    path = image_dir / "weights.safetensors"
    with pytest.raises(OSError) as caught:
        path.open("rb")
    exc = caught.value
    # gpu/pool.py wraps unexpected generator exceptions this way.
    wrapped = GeneratorError(f"generator failed: {type(exc).__name__}: {exc}")
    failure = assert_no_server_path(describe_failure(wrapped), path)
    assert failure.message.startswith("generation failed: generator failed: FileNotFoundError: [Errno 2]")


def test_a_pil_error_carried_from_a_worker_process_is_redacted(image_dir: Path) -> None:
    path = image_dir / "init-1.png"
    path.write_bytes(b"GIF89a broken")
    with pytest.raises(Image.UnidentifiedImageError) as caught:
        Image.open(path)
    # The subprocess pool re-raises the worker's error text as GeneratorError(message.error).
    failure = assert_no_server_path(describe_failure(GeneratorError(str(caught.value))), path)
    assert failure.message == f"generation failed: cannot identify image file '{REDACTED_PATH}'"


@pytest.mark.parametrize(
    ("exc", "code", "expected"),
    [
        (
            StoreError("cannot open /var/lib/rtc/sessions/abc.state: Permission denied"),
            "internal_error",
            f"session store failed: cannot open {REDACTED_PATH}: Permission denied",
        ),
        (
            StoreError("redis get failed: Error 111 connecting to localhost:6379. Connection refused."),
            "internal_error",
            "session store failed: redis get failed: Error 111 connecting to localhost:6379. Connection refused.",
        ),
        (
            StoreError("cannot connect to redis at redis://:***@cache.internal:6379/0: timed out"),
            "internal_error",
            "session store failed: cannot connect to redis at redis://:***@cache.internal:6379/0: timed out",
        ),
        (
            GeneratorError("cannot load an LTX pipeline from '/opt/models/ltx video': OSError: no config.json"),
            "internal_error",
            f"generation failed: cannot load an LTX pipeline from '{REDACTED_PATH}': OSError: no config.json",
        ),
        (
            IncompatibleStateError("state made by a different model (/srv/models/a vs ~/models/b)"),
            "invalid_message",
            f"continuation_state refused: state made by a different model ({REDACTED_PATH} vs {REDACTED_PATH})",
        ),
        (
            WorkerFailedError("worker-0 failed mid-segment: core dumped to file:///var/crash/w0.core."),
            "worker_failed",
            f"worker-0 failed mid-segment: core dumped to {REDACTED_PATH}.",
        ),
        (PoolUnavailableError("pool is shutting down"), "gpu_unavailable", "pool is shutting down"),
        (
            PoolError("a 3/4 full slot, input/output error"),
            "internal_error",
            "generation failed: a 3/4 full slot, input/output error",
        ),
        (
            InitImageError("bad_base64", "initial_image.data is not valid base64 (Incorrect padding)"),
            "invalid_message",
            "initial_image.data is not valid base64 (Incorrect padding)",
        ),
        (
            ResumeRefused("continuation_state.segment_idx must be >= 0"),
            "invalid_message",
            "continuation_state.segment_idx must be >= 0",
        ),
    ],
)
def test_each_failure_kind_keeps_its_code_and_loses_only_paths(exc: Exception, code: str, expected: str) -> None:
    failure = describe_failure(exc)
    assert failure is not None
    assert (failure.code, failure.message) == (code, expected)


def test_an_unexpected_exception_is_not_described() -> None:
    assert describe_failure(KeyError("/tmp/x")) is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("see /tmp/a.png.", f"see {REDACTED_PATH}."),
        ("(/tmp/a.png)", f"({REDACTED_PATH})"),
        ('"/tmp/a b.png" missing', f'"{REDACTED_PATH}" missing'),
        ("'/a' and '/b'", f"'{REDACTED_PATH}' and '{REDACTED_PATH}'"),
        ("ask http://llm.local:8000/v1/chat/completions", "ask http://llm.local:8000/v1/chat/completions"),
        ("ratio 16/9 and/or 3 / 4", "ratio 16/9 and/or 3 / 4"),
        ("no paths here", "no paths here"),
        ("at ~/cache/x.bin", f"at {REDACTED_PATH}"),
        ("line one /a/b\nline two", f"line one {REDACTED_PATH}\nline two"),
    ],
)
def test_redact_paths(text: str, expected: str) -> None:
    assert redact_paths(text) == expected
