"""Text cleaning that keeps document structure: paragraphs and newlines survive, noise does not."""

from __future__ import annotations

import re
import unicodedata

# Control characters except tab and newline (carriage returns are turned into newlines first), plus the BOM and
# the Unicode non-characters that some scrapers leave behind.
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\ufeff\ufffe\uffff]")
_INNER_SPACE = re.compile(r"(?<=\S)[ \t\u00a0\u2000-\u200a\u3000]{2,}")  # runs after a visible char, not indentation
_TRAILING_SPACE = re.compile(r"[ \t]+\n")
_MANY_NEWLINES = re.compile(r"\n{3,}")


def clean_text(text: str, normalization: str | None = "NFC") -> str:
    """Normalize Unicode, drop control characters, collapse whitespace runs inside lines, strip line ends, and keep
    at most one blank line between paragraphs. Leading indentation is kept (code and verse rely on it)."""
    if normalization:
        text = unicodedata.normalize(normalization, text)
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = _CONTROL.sub("", text)
    text = _INNER_SPACE.sub(" ", text)
    text = _TRAILING_SPACE.sub("\n", text + "\n")
    text = _MANY_NEWLINES.sub("\n\n", text)
    return text.strip("\n").rstrip()
