"""Streaming text out of token ids: incremental detokenization and stop strings.

Decoding one token at a time is wrong for two reasons: a byte-fallback character is split over several tokens (a
lone piece decodes to U+FFFD), and SentencePiece drops the leading space of the first token it decodes. So, as TGI
and vLLM do, we decode a short window that starts a few tokens back (``prefix``) and emit only the text the newest
tokens add, holding it back while it ends in an incomplete character.
"""

from __future__ import annotations

from transformers import PreTrainedTokenizerBase

REPLACEMENT_CHARACTER = "\ufffd"
CONTEXT_TOKENS = 5  # tokens of prompt decoded in front of the output, for its first token's leading space
MAX_CHARACTER_TOKENS = 4  # a UTF-8 character has at most 4 bytes: a longer incomplete tail is invalid bytes


class IncrementalDetokenizer:
    def __init__(self, tokenizer: PreTrainedTokenizerBase, prompt_ids: list[int]):
        self.tokenizer = tokenizer
        self.ids = list(prompt_ids[-CONTEXT_TOKENS:])
        self.prefix_offset = 0
        self.read_offset = len(self.ids)

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)

    def add(self, token_id: int) -> str:
        """The new text that ``token_id`` completes ('' while a character is incomplete)."""
        self.ids.append(token_id)
        return self._advance(final=False)

    def flush(self) -> str:
        """At the end: what is still held back, less an incomplete character that will never complete."""
        return self._advance(final=True)

    def _advance(self, final: bool) -> str:
        prefix_text = self._decode(self.ids[self.prefix_offset:self.read_offset])
        text = self._decode(self.ids[self.prefix_offset:])
        incomplete = text.endswith(REPLACEMENT_CHARACTER) and len(self.ids) - self.read_offset <= MAX_CHARACTER_TOKENS
        if len(text) <= len(prefix_text) or (incomplete and not final):
            return ""
        self.prefix_offset, self.read_offset = self.read_offset, len(self.ids)
        # What still decodes to U+FFFD now is bytes that form no character (invalid UTF-8 from the model): dropped.
        return text[len(prefix_text):].replace(REPLACEMENT_CHARACTER, "")


class StopStringMatcher:
    """Cuts the text stream before the first stop string, also when one arrives over several tokens: text that could
    still be the start of a stop string is held back until it is known not to be."""

    def __init__(self, stop: list[str]):
        self.stop = [s for s in stop if s]
        self.pending = ""

    def feed(self, text: str) -> tuple[str, bool]:
        """``(text safe to emit, stopped)``."""
        buffer = self.pending + text
        hits = [index for index in (buffer.find(s) for s in self.stop) if index >= 0]
        if hits:
            self.pending = ""
            return buffer[:min(hits)], True
        hold = max((n for s in self.stop for n in range(min(len(s) - 1, len(buffer)), 0, -1)
                    if buffer.endswith(s[:n])), default=0)
        self.pending = buffer[len(buffer) - hold:] if hold else ""
        return buffer[:len(buffer) - hold], False

    def flush(self) -> str:
        text, self.pending = self.pending, ""
        return text
