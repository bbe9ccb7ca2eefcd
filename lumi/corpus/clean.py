"""Text cleaning that keeps document structure: paragraphs and newlines survive, noise does not."""

from __future__ import annotations

import re
import unicodedata

import ftfy

# Control characters except tab and newline (carriage returns are turned into newlines first), plus the BOM and
# the Unicode non-characters that some scrapers leave behind.
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\ufeff\ufffe\uffff]")
_INNER_SPACE = re.compile(r"(?<=\S)[ \t\u00a0\u2000-\u200a\u3000]{2,}")  # runs after a visible char, not indentation
_TRAILING_SPACE = re.compile(r"[ \t]+\n")
_MANY_NEWLINES = re.compile(r"\n{3,}")
# The signature of UTF-8 read as Windows-1252/Latin-1, the mojibake of web text: a UTF-8 lead byte (Â..ô) followed by
# a continuation byte (0x80-0xBF) as that code page shows it. A cheap gate before ftfy's far slower detector.
_MOJIBAKE_HINT = re.compile("[\u00c2-\u00f4][\u0080-\u00bf\u0152\u0153\u0160\u0161\u0178\u017d\u017e\u0192"
                            "\u02c6\u02dc\u2013\u2014\u2018-\u201e\u2020-\u2022\u2026\u2030\u2039\u203a\u20ac\u2122]")
# ftfy as a repair of broken encodings only: quotes, character widths, HTML entities and line breaks stay as the
# author wrote them; control characters and normalization are handled below (configurable).
_FTFY = ftfy.TextFixerConfig(unescape_html=False, uncurl_quotes=False, fix_character_width=False,
                             fix_line_breaks=False, remove_control_chars=False, normalization=None, explain=False)


def clean_text(text: str, normalization: str | None = "NFC", fix_unicode: bool = True) -> str:
    """Repair mojibake (ftfy), normalize Unicode, drop control characters, collapse whitespace runs inside lines,
    strip line ends, and keep at most one blank line between paragraphs. Leading indentation is kept (code and
    verse rely on it). ftfy (about 3 MB/s) runs only on documents that show the mojibake signature."""
    if fix_unicode and not text.isascii() and _MOJIBAKE_HINT.search(text):
        text = ftfy.fix_text(text, _FTFY)
    if normalization:
        text = unicodedata.normalize(normalization, text)
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = _CONTROL.sub("", text)
    text = _INNER_SPACE.sub(" ", text)
    text = _TRAILING_SPACE.sub("\n", text + "\n")
    text = _MANY_NEWLINES.sub("\n\n", text)
    return text.strip("\n").rstrip()
