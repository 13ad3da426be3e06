"""The ``initial_image`` of ``session_init_v2``: validation, decoding and a private temp file.

Decoding up to 32 MiB of base64 and writing files are blocking: call ``decode_init_image``,
``persist_init_image`` and ``discard_init_image`` from a thread (``asyncio.to_thread``), never
directly inside the event loop.

``data`` is strict base64 (no whitespace, correct padding). A browser ``data:`` URL prefix such as
``data:image/png;base64,`` (what ``FileReader.readAsDataURL`` yields) is tolerated and stripped;
its media type must agree with ``mime``.

The image is checked at the door, so that no fault reaches a generator: its dimensions are read from
the header and refused above ``max_pixels`` before any pixel is decoded (a 12 000 x 12 000 PNG is a
few KB compressed and 430 MB decoded), then it is decoded in full, so a truncated or corrupt body is
an InitImageError here rather than a generator failure later.
"""

from __future__ import annotations

import base64
import binascii
import io
import logging
import os
import re
import struct
import tempfile
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from PIL import Image, ImageFile, JpegImagePlugin, PngImagePlugin, WebPImagePlugin

__all__ = [
    "DEFAULT_MAX_IMAGE_PIXELS",
    "DEFAULT_MAX_INIT_IMAGE_BYTES",
    "DecodedInitImage",
    "InitImageError",
    "InitImageProblem",
    "decode_init_image",
    "discard_init_image",
    "persist_init_image",
]

logger = logging.getLogger(__name__)

DEFAULT_MAX_INIT_IMAGE_BYTES = 32 * 1024 * 1024  # 32 MiB, decoded
DEFAULT_MAX_IMAGE_PIXELS = 4096 * 4096  # width x height; limits.max_image_pixels' default
MAX_DISPLAY_NAME_CHARS = 100
# A data: URL header is short; bounding the search keeps a huge prefix-less string from being scanned.
_MAX_DATA_URL_HEADER_CHARS = 128

InitImageProblem = Literal[
    "not_an_object", "bad_mime", "bad_data", "bad_base64", "empty", "too_large", "too_many_pixels", "corrupt", "bad_name"
]

# Declared mime -> canonical mime; image/jpg is a common misspelling the protocol accepts.
_CANONICAL_MIME = {
    "image/png": "image/png",
    "image/jpeg": "image/jpeg",
    "image/jpg": "image/jpeg",
    "image/webp": "image/webp",
}
_EXTENSION = {"image/png": ".png", "image/jpeg": ".jpg", "image/webp": ".webp"}
_LABEL = {"image/png": "PNG", "image/jpeg": "JPEG", "image/webp": "WebP"}
# The format's own reader, built directly: it reads the header only, and unlike Image.open it runs no
# decompression-bomb check, whose warning would fire for images our own limit refuses anyway.
_READER: dict[str, type[ImageFile.ImageFile]] = {
    "image/png": PngImagePlugin.PngImageFile,
    "image/jpeg": JpegImagePlugin.JpegImageFile,
    "image/webp": WebPImagePlugin.WebPImageFile,
}
# What Pillow's format plugins raise on a corrupt or truncated body (SyntaxError: "broken PNG file",
# struct.error and the like from short reads).
_DECODE_ERRORS = (
    OSError,
    SyntaxError,
    ValueError,
    EOFError,
    IndexError,
    KeyError,
    TypeError,
    struct.error,
)
_ACCEPTED_MIMES = ", ".join(sorted(_CANONICAL_MIME))
_NAME_DISALLOWED = re.compile(r"[^A-Za-z0-9._ -]")


class InitImageError(ValueError):
    """An ``initial_image`` that cannot be used; ``problem`` is a short machine-friendly code."""

    def __init__(self, problem: InitImageProblem, message: str) -> None:
        super().__init__(message)
        self.problem: InitImageProblem = problem
        self.message = message


@dataclass(frozen=True)
class DecodedInitImage:
    """A validated initial image: its bytes, canonical mime and a sanitised display name."""

    data: bytes
    mime: str
    display_name: str

    @property
    def extension(self) -> str:
        """The file extension of the mime, with its dot (``.png``, ``.jpg``, ``.webp``)."""
        return _EXTENSION[self.mime]

    def __repr__(self) -> str:
        # The default repr would dump up to 32 MiB of bytes into logs and tracebacks.
        return f"DecodedInitImage(mime={self.mime!r}, display_name={self.display_name!r}, size={len(self.data)})"


def decode_init_image(
    payload: object,
    *,
    max_bytes: int = DEFAULT_MAX_INIT_IMAGE_BYTES,
    max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
) -> DecodedInitImage | None:
    """Validate and decode an ``initial_image`` object; None when there is none.

    ``max_bytes`` bounds the decoded file, ``max_pixels`` its width x height (checked from the
    header, before decoding). The image is then decoded in full once, to prove it readable.
    Raises InitImageError naming the first fault found. Blocking: run it in a thread.
    """
    if max_bytes < 1:
        raise ValueError(f"max_bytes must be positive, got {max_bytes}")
    if max_pixels < 1:
        raise ValueError(f"max_pixels must be positive, got {max_pixels}")
    if payload is None:
        return None
    if not isinstance(payload, dict):
        raise InitImageError(
            "not_an_object",
            f"initial_image must be an object with mime and data, got {_type_name(payload)}",
        )
    mime = _check_mime(payload.get("mime"))
    encoded = _strip_data_url(_check_data_field(payload.get("data")), mime)
    _check_encoded_size(encoded, max_bytes)
    try:
        data = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InitImageError("bad_base64", f"initial_image.data is not valid base64 ({exc})") from exc
    if not data:
        raise InitImageError("empty", "initial_image.data is empty")
    _check_signature(data, mime)
    _check_pixels(data, mime, max_pixels)
    return DecodedInitImage(data=data, mime=mime, display_name=_display_name(payload.get("name"), mime))


def persist_init_image(image: DecodedInitImage, directory: str | Path) -> Path:
    """Write the image to a new private (0600) file in ``directory`` and return its path.

    The caller owns the file and removes it with ``discard_init_image``. Blocking.
    """
    fd, name = tempfile.mkstemp(prefix="init-", suffix=image.extension, dir=directory)
    path = Path(name)
    try:
        # mkstemp already creates 0600; set it explicitly so a permissive umask/platform cannot widen it.
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb") as file:
            fd = -1  # owned by the file object from here on
            file.write(image.data)
    except BaseException:
        if fd != -1:
            os.close(fd)
        path.unlink(missing_ok=True)
        raise
    return path


def discard_init_image(path: Path | None) -> None:
    """Remove a file written by ``persist_init_image``; a missing file or None is fine. Blocking."""
    if path is None:
        return
    try:
        path.unlink(missing_ok=True)
    except OSError as exc:
        # Cleanup runs at session end; a leftover temp file must not fail the teardown.
        logger.warning("could not remove initial image %s: %s", path, exc)


def _check_mime(value: object) -> str:
    if value is None:
        raise InitImageError("bad_mime", f"initial_image.mime is missing; expected one of {_ACCEPTED_MIMES}")
    if not isinstance(value, str):
        raise InitImageError("bad_mime", f"initial_image.mime must be a string, got {_type_name(value)}")
    canonical = _CANONICAL_MIME.get(value.strip().lower())
    if canonical is None:
        raise InitImageError(
            "bad_mime", f"initial_image.mime {_preview(value)!r} is not one of {_ACCEPTED_MIMES}"
        )
    return canonical


def _check_data_field(value: object) -> str:
    if value is None:
        raise InitImageError("bad_data", "initial_image.data is missing; expected a base64 string")
    if not isinstance(value, str):
        raise InitImageError(
            "bad_data", f"initial_image.data must be a base64 string, got {_type_name(value)}"
        )
    return value


def _strip_data_url(data: str, mime: str) -> str:
    if not data.startswith("data:"):
        return data
    comma = data.find(",", 0, _MAX_DATA_URL_HEADER_CHARS)
    if comma < 0:
        raise InitImageError("bad_base64", "initial_image.data starts with 'data:' but has no ',' after its header")
    header = data[len("data:") : comma]
    media_type, _, encoding = header.partition(";")
    if encoding.lower() != "base64":
        raise InitImageError(
            "bad_base64", f"initial_image.data URL header {_preview(header)!r} does not end in ';base64'"
        )
    if _CANONICAL_MIME.get(media_type.strip().lower()) != mime:
        raise InitImageError(
            "bad_mime",
            f"initial_image.data URL type {_preview(media_type)!r} does not match initial_image.mime {mime!r}",
        )
    return data[comma + 1 :]


def _check_encoded_size(encoded: str, max_bytes: int) -> None:
    # For valid base64 this is the exact decoded size, so a huge string is refused before decoding.
    padding = (encoded[-1:] == "=") + (encoded[-2:] == "==")
    decoded_size = len(encoded) * 3 // 4 - padding
    if decoded_size > max_bytes:
        raise InitImageError(
            "too_large",
            f"initial_image.data decodes to about {decoded_size} bytes, more than the limit of {max_bytes} bytes",
        )


def _sniff_mime(data: bytes) -> str | None:
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return None


def _check_signature(data: bytes, mime: str) -> None:
    actual = _sniff_mime(data)
    if actual == mime:
        return
    if actual is None:
        message = f"initial_image.data does not start with a {_LABEL[mime]} signature (mime {mime!r})"
    else:
        message = f"initial_image.data is a {_LABEL[actual]} image, but initial_image.mime is {mime!r}"
    raise InitImageError("bad_mime", message)


def _check_pixels(data: bytes, mime: str, max_pixels: int) -> None:
    """Refuse an image over ``max_pixels`` from its header alone, then decode it fully to prove it sound."""
    label = _LABEL[mime]
    try:
        # The reader parses the header only; pixels are decoded by load().
        with _READER[mime](io.BytesIO(data)) as image:
            width, height = image.size
            if width * height > max_pixels:
                raise InitImageError(
                    "too_many_pixels",
                    f"initial_image is {width}x{height} = {width * height} pixels, "
                    f"more than the limit of {max_pixels} pixels",
                )
            image.load()
    except InitImageError:
        raise
    except Image.DecompressionBombError as exc:  # WebP's reader checks, above twice Pillow's own limit
        raise InitImageError(
            "too_many_pixels", f"initial_image has more pixels than the limit of {max_pixels} pixels"
        ) from exc
    except _DECODE_ERRORS as exc:
        # Pillow's own text names a buffer object and offsets: nothing a client can act on.
        raise InitImageError("corrupt", f"initial_image.data is not a readable {label} image (corrupt or truncated)") from exc


def _display_name(value: object, mime: str) -> str:
    fallback = "init" + _EXTENSION[mime]
    if value is None:
        return fallback
    if not isinstance(value, str):
        raise InitImageError("bad_name", f"initial_image.name must be a string, got {_type_name(value)}")
    basename = value.replace("\\", "/").rsplit("/", 1)[-1]
    # NFKD splits accented letters so "é" keeps its "e" rather than vanishing.
    ascii_name = unicodedata.normalize("NFKD", basename)
    cleaned = _NAME_DISALLOWED.sub("", ascii_name).strip(" .")
    # A name of only dots ("..") or one that starts with "-" could be read as a path or an option.
    cleaned = cleaned.lstrip("-")
    if not cleaned:
        return fallback
    if len(cleaned) > MAX_DISPLAY_NAME_CHARS:
        _, dot, suffix = cleaned.rpartition(".")
        suffix = dot + suffix if dot and 0 < len(suffix) <= 10 else ""
        cleaned = cleaned[: MAX_DISPLAY_NAME_CHARS - len(suffix)].rstrip(" .") + suffix
    return cleaned


def _type_name(value: object) -> str:
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, (int, float)):
        return "a number"
    return type(value).__name__


def _preview(text: str, limit: int = 40) -> str:
    return text if len(text) <= limit else text[:limit] + "..."
