"""System prompts of the enhancer's three operations: built-in defaults and per-file overrides.

An operator overrides one by putting ``enhance.txt``, ``auto_extend.txt`` or ``rewrite.txt`` in
the enhancer's ``system_prompt_dir``; a missing, empty or unreadable file falls back to the
default, so a half-edited directory never leaves an operation without instructions.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Literal

__all__ = ["DEFAULT_SYSTEM_PROMPTS", "OPERATIONS", "Operation", "load_system_prompts"]

logger = logging.getLogger(__name__)

Operation = Literal["enhance", "auto_extend", "rewrite"]
OPERATIONS: tuple[Operation, ...] = ("enhance", "auto_extend", "rewrite")
_MAX_FILE_BYTES = 64 * 1024  # 64 KiB; a system prompt is a paragraph, not a document

DEFAULT_SYSTEM_PROMPTS: Mapping[Operation, str] = MappingProxyType(
    {
        "enhance": (
            "You improve prompts for a text-to-video model. Keep the user's subject, characters and intent; "
            "add concrete visual detail: setting, lighting, colours, motion, camera angle and movement, style. "
            "Do not add text overlays, violence or nudity the user did not ask for. "
            "Reply with the improved prompt only: one paragraph under 80 words, no preamble, no quotes."
        ),
        "auto_extend": (
            "You continue a video that is generated segment by segment. You are given the prompts of the "
            "previous segments, oldest first. Write the prompt for the next segment: the same characters, "
            "setting and style, with one natural next action or camera move so the video flows on smoothly. "
            "Reply with the prompt only: one paragraph under 80 words, no preamble, no quotes."
        ),
        "rewrite": (
            "You write alternative prompts for a text-to-video model. Given a seed prompt, write distinct "
            "variations that keep its subject but vary the setting, mood, lighting, style or camera work. "
            "Reply with one prompt per line and nothing else: no numbering, no headings, no commentary."
        ),
    }
)


def _read_override(path: Path) -> str | None:
    """The stripped text of ``path``, or None when it is missing, empty or unreadable."""
    try:
        with path.open("rb") as f:
            data = f.read(_MAX_FILE_BYTES + 1)
    except FileNotFoundError:
        return None
    except OSError as exc:
        logger.warning("system prompt %s unreadable (%s); using the default", path, exc)
        return None
    if len(data) > _MAX_FILE_BYTES:
        logger.warning("system prompt %s is over %d bytes; using the default", path, _MAX_FILE_BYTES)
        return None
    try:
        text = data.decode("utf-8").strip()
    except UnicodeDecodeError as exc:
        logger.warning("system prompt %s is not UTF-8 (%s); using the default", path, exc)
        return None
    return text or None


def load_system_prompts(directory: str | Path | None) -> Mapping[Operation, str]:
    """The system prompt of each operation: ``{directory}/{operation}.txt`` where usable, else the default.

    Blocking file I/O (a few small files): call from a thread when on the event loop.
    """
    if directory is None:
        return DEFAULT_SYSTEM_PROMPTS
    root = Path(directory)
    if not root.is_dir():
        logger.warning("system prompt directory %s does not exist; using the defaults", root)
        return DEFAULT_SYSTEM_PROMPTS
    prompts: dict[Operation, str] = {}
    for operation in OPERATIONS:
        override = _read_override(root / f"{operation}.txt")
        prompts[operation] = override if override is not None else DEFAULT_SYSTEM_PROMPTS[operation]
    return MappingProxyType(prompts)
