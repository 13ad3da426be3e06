"""Server file paths out of client-facing text. Pure code.

Messages of exceptions raised deep in the generator, the pool, PIL or the store name server files
(an initial image's temporary path, a model directory); a client learns what went wrong, not how
the server's disk is laid out.
"""

from __future__ import annotations

import re

__all__ = ["REDACTED_PATH", "redact_paths"]

REDACTED_PATH = "<server path>"

# A quoted path (repr() of a str or Path, as PIL, OSError and f"{path!r}" print it): everything
# up to the closing quote is the path, spaces included.
_QUOTED_PATH = re.compile(r"""(?P<quote>['"])(?:file://)?~?/(?:(?!(?P=quote))[^\n])*(?P=quote)""")
# A bare path: a slash that starts a word (not "and/or", "3/4", nor the slashes of "http://host/x"),
# up to whitespace or a quote. Closing punctuation is given back below.
_BARE_PATH = re.compile(r"""(?<![\w/.:~\\-])(?:file://)?~?/[^\s'"<>]+""")
_TRAILING_PUNCTUATION = ".,;:!?)]}"


def _redact_bare(match: re.Match[str]) -> str:
    path = match.group(0)
    kept = path.rstrip(_TRAILING_PUNCTUATION)
    return REDACTED_PATH + path[len(kept) :] if kept not in ("/", "~/", "file:///") else path


def redact_paths(text: str) -> str:
    """``text`` with every absolute filesystem path (quoted or bare, ``~/`` and ``file://`` too)
    replaced by ``<server path>``; URLs and fractions such as ``3/4`` are left alone."""
    text = _QUOTED_PATH.sub(lambda m: f"{m['quote']}{REDACTED_PATH}{m['quote']}", text)
    return _BARE_PATH.sub(_redact_bare, text)
