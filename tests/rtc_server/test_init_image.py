"""The initial_image of session_init_v2: every fault has its own code and message."""

from __future__ import annotations

import base64
import io
import os
import re
import stat
import struct
import time
import zlib
from pathlib import Path
from typing import Any, Self

import pytest
from PIL import Image, ImageFile

from rtc_server.init_image import (
    DEFAULT_MAX_IMAGE_PIXELS,
    DecodedInitImage,
    InitImageError,
    decode_init_image,
    discard_init_image,
    persist_init_image,
)

_MISSING = object()
BOMB_EDGE_PX = 12_000


def image_bytes(format: str, size: tuple[int, int] = (4, 3)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (200, 30, 90)).save(buffer, format=format)
    return buffer.getvalue()


def png_bytes(size: tuple[int, int] = (4, 3)) -> bytes:
    return image_bytes("PNG", size)


def noisy_png_bytes(size: tuple[int, int] = (64, 64)) -> bytes:
    """A PNG whose pixel data is most of the file, so cutting it loses pixels, not just the end marker."""
    buffer = io.BytesIO()
    Image.effect_noise(size, 60).convert("RGB").save(buffer, format="PNG")
    return buffer.getvalue()


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def bilevel_png(width: int, height: int) -> bytes:
    """A valid all-black 1-bit PNG built row by row: 12 000 x 12 000 is 18 KB here, 144 MP decoded."""
    row = b"\x00" * (1 + (width + 7) // 8)  # filter byte, then 8 pixels per byte
    compressor = zlib.compressobj(9)
    pixels = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # 1 bit, greyscale
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", pixels)
        + _png_chunk(b"IEND", b"")
    )


JPEG_BYTES = image_bytes("JPEG")
WEBP_BYTES = image_bytes("WEBP")


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def payload(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"mime": "image/png", "name": "fox.png", "data": b64(png_bytes())}
    base.update(overrides)
    return {key: value for key, value in base.items() if value is not _MISSING}


def problem_of(value: object, **kwargs: Any) -> InitImageError:
    with pytest.raises(InitImageError) as info:
        decode_init_image(value, **kwargs)
    assert isinstance(info.value, ValueError)
    return info.value


def test_none_means_no_image() -> None:
    assert decode_init_image(None) is None


def test_real_png_round_trips() -> None:
    original = png_bytes()
    image = decode_init_image(payload(data=b64(original)))
    assert image is not None
    assert image.data == original
    assert image.mime == "image/png"
    assert image.display_name == "fox.png"
    assert image.extension == ".png"
    with Image.open(io.BytesIO(image.data)) as decoded:
        assert decoded.size == (4, 3)


@pytest.mark.parametrize(
    ("mime", "data", "canonical", "extension"),
    [
        ("image/jpeg", JPEG_BYTES, "image/jpeg", ".jpg"),
        ("image/jpg", JPEG_BYTES, "image/jpeg", ".jpg"),
        ("image/webp", WEBP_BYTES, "image/webp", ".webp"),
        ("IMAGE/PNG", png_bytes(), "image/png", ".png"),
        ("image/png", bilevel_png(64, 48), "image/png", ".png"),
    ],
)
def test_each_accepted_mime_decodes(mime: str, data: bytes, canonical: str, extension: str) -> None:
    image = decode_init_image({"mime": mime, "data": b64(data)})
    assert image is not None
    assert (image.mime, image.extension, image.display_name) == (canonical, extension, "init" + extension)


def test_data_url_prefix_is_stripped() -> None:
    original = png_bytes()
    image = decode_init_image(payload(data="data:image/png;base64," + b64(original)))
    assert image is not None and image.data == original


def test_data_url_of_another_type_is_bad_mime() -> None:
    error = problem_of(payload(data="data:image/jpeg;base64," + b64(png_bytes())))
    assert error.problem == "bad_mime"
    assert "'image/jpeg' does not match initial_image.mime 'image/png'" in str(error)


def test_data_url_without_base64_marker_is_bad_base64() -> None:
    error = problem_of(payload(data="data:image/png," + b64(png_bytes())))
    assert error.problem == "bad_base64"
    assert "';base64'" in str(error)


@pytest.mark.parametrize(
    ("value", "described"),
    [("image.png", "a string"), ([1, 2], "an array"), (42, "a number"), (True, "a boolean")],
)
def test_not_an_object(value: object, described: str) -> None:
    error = problem_of(value)
    assert error.problem == "not_an_object"
    assert str(error) == f"initial_image must be an object with mime and data, got {described}"


def test_missing_mime() -> None:
    error = problem_of(payload(mime=_MISSING))
    assert error.problem == "bad_mime"
    assert str(error).startswith("initial_image.mime is missing")


def test_non_string_mime() -> None:
    error = problem_of(payload(mime=7))
    assert error.problem == "bad_mime"
    assert str(error) == "initial_image.mime must be a string, got a number"


def test_unsupported_mime() -> None:
    error = problem_of(payload(mime="image/gif"))
    assert error.problem == "bad_mime"
    assert str(error) == "initial_image.mime 'image/gif' is not one of image/jpeg, image/jpg, image/png, image/webp"


def test_missing_data() -> None:
    error = problem_of(payload(data=_MISSING))
    assert error.problem == "bad_data"
    assert str(error) == "initial_image.data is missing; expected a base64 string"


def test_non_string_data() -> None:
    error = problem_of(payload(data=[1, 2, 3]))
    assert error.problem == "bad_data"
    assert str(error) == "initial_image.data must be a base64 string, got an array"


@pytest.mark.parametrize("data", ["not base64!", "iVBORw0KGgo", "iVBO Rw0K", "aVZCT1J3MEtHZ29=\n", "ünïcode="])
def test_invalid_base64(data: str) -> None:
    error = problem_of(payload(data=data))
    assert error.problem == "bad_base64"
    assert str(error).startswith("initial_image.data is not valid base64")
    assert isinstance(error.__cause__, ValueError)


def test_empty_data() -> None:
    error = problem_of(payload(data=""))
    assert error.problem == "empty"
    assert str(error) == "initial_image.data is empty"


def test_too_large_is_refused() -> None:
    error = problem_of(payload(data=b64(png_bytes())), max_bytes=16)
    assert error.problem == "too_large"
    assert "more than the limit of 16 bytes" in str(error)


def test_size_limit_is_exact_at_the_boundary() -> None:
    data = png_bytes()
    image = decode_init_image(payload(data=b64(data)), max_bytes=len(data))
    assert image is not None
    assert problem_of(payload(data=b64(data)), max_bytes=len(data) - 1).problem == "too_large"


def test_too_large_is_refused_before_decoding() -> None:
    # Not base64 at all: if it were decoded first the fault would be bad_base64.
    error = problem_of(payload(data="!" * 4000), max_bytes=1000)
    assert error.problem == "too_large"
    assert "about 3000 bytes" in str(error)


@pytest.mark.parametrize(
    ("mime", "data", "message"),
    [
        ("image/png", JPEG_BYTES, "initial_image.data is a JPEG image, but initial_image.mime is 'image/png'"),
        ("image/jpeg", png_bytes(), "initial_image.data is a PNG image, but initial_image.mime is 'image/jpeg'"),
        (
            "image/webp",
            b"RIFF\x10\x00\x00\x00AVI LIST",
            "initial_image.data does not start with a WebP signature (mime 'image/webp')",
        ),
        ("image/png", b"hello world", "initial_image.data does not start with a PNG signature (mime 'image/png')"),
    ],
)
def test_signature_must_match_declared_mime(mime: str, data: bytes, message: str) -> None:
    error = problem_of({"mime": mime, "data": b64(data)})
    assert error.problem == "bad_mime"
    assert str(error) == message


def test_non_string_name() -> None:
    error = problem_of(payload(name=["a"]))
    assert error.problem == "bad_name"
    assert str(error) == "initial_image.name must be a string, got an array"


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("../../etc/passwd", "passwd"),
        ("..", "init.png"),
        ("dir/sub/pic.png", "pic.png"),
        ("C:\\Users\\me\\pic.png", "pic.png"),
        ("evil\x00name\r\n\t.png", "evilname.png"),
        ("photo: café <1>.png", "photo cafe 1.png"),
        ("-rf.png", "rf.png"),
        ("/", "init.png"),
        ("   ", "init.png"),
        ("", "init.png"),
        ("\u6f22\u5b57", "init.png"),
    ],
)
def test_names_are_sanitised(name: str, expected: str) -> None:
    image = decode_init_image(payload(name=name))
    assert image is not None
    assert image.display_name == expected


def test_long_names_are_cut_keeping_the_extension() -> None:
    image = decode_init_image(payload(name="a" * 500 + ".png"))
    assert image is not None
    assert len(image.display_name) == 100
    assert image.display_name == "a" * 96 + ".png"


def test_repr_does_not_dump_the_bytes() -> None:
    image = DecodedInitImage(data=b"\x89PNG" * 1000, mime="image/png", display_name="x.png")
    assert len(repr(image)) < 100
    assert "size=4000" in repr(image)


def test_persist_writes_a_private_file_and_discard_removes_it(tmp_path: Path) -> None:
    image = decode_init_image(payload())
    assert image is not None
    path = persist_init_image(image, tmp_path)
    try:
        assert path.parent == tmp_path
        assert path.name.startswith("init-") and path.suffix == ".png"
        assert path.read_bytes() == image.data
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    finally:
        discard_init_image(path)
    assert not path.exists()
    assert list(tmp_path.iterdir()) == []


def test_discard_tolerates_missing_files_and_none(tmp_path: Path) -> None:
    discard_init_image(None)
    discard_init_image(tmp_path / "init-gone.png")


def test_persist_into_a_missing_directory_raises_and_leaves_nothing(tmp_path: Path) -> None:
    image = decode_init_image(payload())
    assert image is not None
    with pytest.raises(FileNotFoundError):
        persist_init_image(image, tmp_path / "absent")
    assert list(tmp_path.iterdir()) == []


def test_persist_removes_the_partial_file_when_writing_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    image = decode_init_image(payload())
    assert image is not None

    real_fdopen = os.fdopen

    class FullDisk:
        def __init__(self, fd: int) -> None:
            self._file = real_fdopen(fd, "wb")

        def __enter__(self) -> Self:
            return self

        def __exit__(self, *exc_info: object) -> None:
            self._file.close()

        def write(self, data: bytes) -> int:
            raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fdopen", lambda fd, mode: FullDisk(fd))
    with pytest.raises(OSError, match="No space left"):
        persist_init_image(image, tmp_path)
    assert list(tmp_path.iterdir()) == []


# Pixels and decoding, checked at the door.


def test_an_image_bomb_is_refused_from_its_header_without_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    bomb = bilevel_png(BOMB_EDGE_PX, BOMB_EDGE_PX)
    assert len(bomb) < 64 * 1024  # a few KB on the wire...
    loads: list[object] = []
    real_load = ImageFile.ImageFile.load

    def spy_load(self: ImageFile.ImageFile) -> Any:
        loads.append(self)
        return real_load(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", spy_load)
    started = time.perf_counter()
    error = problem_of(payload(data=b64(bomb)))
    elapsed = time.perf_counter() - started
    assert error.problem == "too_many_pixels"
    assert str(error) == (
        "initial_image is 12000x12000 = 144000000 pixels, more than the limit of "
        f"{DEFAULT_MAX_IMAGE_PIXELS} pixels"
    )
    assert loads == []  # ...and not one pixel of its 144 MP was decoded
    assert elapsed < 0.5
    decode_init_image(payload())
    assert len(loads) == 1  # the spy does see the full decode of an image within the limit


def test_the_pixel_limit_is_exact_at_the_boundary() -> None:
    data = bilevel_png(40, 25)
    image = decode_init_image(payload(data=b64(data)), max_pixels=1000)
    assert image is not None and image.data == data
    error = problem_of(payload(data=b64(data)), max_pixels=999)
    assert error.problem == "too_many_pixels"
    assert "40x25 = 1000 pixels, more than the limit of 999 pixels" in str(error)


def test_a_bomb_under_a_generous_limit_is_decoded_in_full() -> None:
    # Pillow's own bomb check does not stand in the way of a limit the config allows.
    image = decode_init_image(payload(data=b64(bilevel_png(3000, 3000))), max_pixels=3000 * 3000)
    assert image is not None


def test_a_truncated_png_is_corrupt() -> None:
    data = noisy_png_bytes()
    error = problem_of(payload(data=b64(data[: len(data) * 2 // 3])))
    assert error.problem == "corrupt"
    assert str(error) == "initial_image.data is not a readable PNG image (corrupt or truncated)"


@pytest.mark.parametrize(
    ("mime", "data", "label"),
    [
        ("image/png", b"\x89PNG\r\n\x1a\n" + b"not a png chunk at all" * 4, "PNG"),
        ("image/jpeg", b"\xff\xd8\xff\xe0" + b"\x00" * 16, "JPEG"),
        ("image/webp", b"RIFF\x10\x00\x00\x00WEBPVP8 " + b"\x00" * 8, "WebP"),
        ("image/jpeg", JPEG_BYTES[: len(JPEG_BYTES) // 2], "JPEG"),
        ("image/webp", WEBP_BYTES[: len(WEBP_BYTES) - 10], "WebP"),
    ],
)
def test_wrong_bytes_behind_a_correct_signature_are_corrupt(mime: str, data: bytes, label: str) -> None:
    error = problem_of({"mime": mime, "data": b64(data)})
    assert error.problem == "corrupt"
    assert str(error) == f"initial_image.data is not a readable {label} image (corrupt or truncated)"


def test_messages_name_no_server_path_or_object() -> None:
    data = noisy_png_bytes()
    for error in (
        problem_of(payload(data=b64(data[:100]))),
        problem_of(payload(data=b64(bilevel_png(BOMB_EDGE_PX, BOMB_EDGE_PX)))),
    ):
        assert "/" not in str(error).replace("image/png", "")
        assert re.search(r"<|0x[0-9a-f]{6,}|BytesIO", str(error)) is None  # no Python object's repr


def test_pixel_limit_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_pixels"):
        decode_init_image(payload(), max_pixels=0)
