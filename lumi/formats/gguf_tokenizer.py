"""A model dir's SentencePiece tokenizer as GGUF tokenizer metadata that llama.cpp encodes exactly as Lumi does.

llama.cpp's ``llama`` tokenizer (SPM) splits text into characters and merges the adjacent pair whose merged text is a
vocabulary piece with the highest score, leftmost first, then falls back to ``<0xXX>`` byte pieces: SentencePiece's
BPE encoder, step for step, when the scores are SentencePiece's own and nothing changes the text first. So export
accepts exactly what the tokenizer stage trains, and refuses in one line what llama.cpp cannot reproduce:

* ``unigram`` models: SentencePiece runs Viterbi over piece log-probabilities; llama.cpp's SPM tokenizer merges pairs
  greedily (measured: most held-out texts differ, docs/BENCHMARKS.md), and its ``t5`` (UGM) tokenizer has no byte
  fallback (an emoji becomes ``<unk>``). The fix is a ``bpe`` tokenizer.
* normalization other than identity, a dummy prefix, whitespace collapsing, no byte fallback (llama.cpp applies
  none of these for this tokenizer type, and needs the byte pieces).
* a control or byte piece whose text two reachable pieces concatenate to (``"<" + "s>"`` -> ``"<s>"``): llama.cpp
  merges any pair whose text is in the vocabulary, SentencePiece never produces control or byte pieces from text.

The chat markers (SentencePiece user-defined pieces) are written as CONTROL tokens: llama.cpp then reads them as
markers only where special tokens are parsed (a rendered chat template) and as plain characters in message text,
which is how Lumi encodes message content (``lumi.data.chat``): untrusted text stays text.

BPE in GGUF also has a ``merges`` list; that is for llama.cpp's byte-level ``gpt2`` tokenizer type, which has neither
SentencePiece's ``▁`` spaces nor its byte pieces. The SPM type takes its merge order from the scores written here.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sentencepiece import sentencepiece_model_pb2 as model_pb2

from lumi.core.errors import LumiError
from lumi.core.special_tokens import BOS_ID, CHAT_MARKERS, EOS_ID, IM_END_ID, PAD_ID, UNK_ID
from lumi.formats.tokenizer import SPM_MODEL, verify_special_ids

Piece = model_pb2.ModelProto.SentencePiece
# gguf.TokenType values (llama.cpp's llama_token_type), named here so this module needs no gguf import.
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6
TOKEN_TYPES = {Piece.NORMAL: NORMAL, Piece.UNKNOWN: UNKNOWN, Piece.CONTROL: CONTROL,
               Piece.USER_DEFINED: USER_DEFINED, Piece.UNUSED: UNUSED, Piece.BYTE: BYTE}
RETRAIN_BPE = "retrain the tokenizer with lumi tokenizer and \"model_type\": \"bpe\" in its config"


@dataclass(frozen=True)
class GGUFVocab:
    """What ``tokenizer.ggml.*`` holds for llama.cpp's ``llama`` tokenizer."""

    tokens: list[str]
    scores: list[float]
    types: list[int]
    bos_id: int = BOS_ID
    eos_id: int = EOS_ID
    unk_id: int = UNK_ID
    pad_id: int = PAD_ID
    end_of_turn_id: int = IM_END_ID
    model: str = "llama"


def _check_settings(proto: model_pb2.ModelProto, source: Path) -> None:
    trainer, normalizer = proto.trainer_spec, proto.normalizer_spec
    if trainer.model_type != model_pb2.TrainerSpec.BPE:
        kind = model_pb2.TrainerSpec.ModelType.Name(trainer.model_type).lower()
        raise LumiError(f"{source}: a SentencePiece {kind} tokenizer cannot be exported exactly (llama.cpp's "
                        f"tokenizers differ from SentencePiece {kind}: greedy merges, or no byte fallback); "
                        f"{RETRAIN_BPE}")
    wrong = [name for name, bad in (
        (f"normalization {normalizer.name!r}", normalizer.name != "identity"),
        ("add_dummy_prefix", normalizer.add_dummy_prefix),
        ("remove_extra_whitespaces", normalizer.remove_extra_whitespaces),
        ("byte_fallback off", not trainer.byte_fallback)) if bad]
    if wrong:
        raise LumiError(f"{source}: {', '.join(wrong)}: llama.cpp does not apply these SentencePiece settings; "
                        "retrain the tokenizer with lumi tokenizer (identity normalization, no dummy prefix, "
                        "byte fallback)")


def _formable(pieces: list[Piece]) -> list[str]:
    """Control, unknown and byte pieces whose text two reachable symbols (single characters or normal pieces)
    concatenate to: llama.cpp could merge such a pair into the special piece where SentencePiece keeps text."""
    reachable = {p.piece for p in pieces if p.type == Piece.NORMAL}
    special = [p.piece for p in pieces if p.type in (Piece.CONTROL, Piece.UNKNOWN, Piece.BYTE, Piece.USER_DEFINED)]
    return [text for text in special
            if any((len(text[:k]) == 1 or text[:k] in reachable) and (len(text[k:]) == 1 or text[k:] in reachable)
                   for k in range(1, len(text)))]


def gguf_vocab(model_dir: str | Path) -> GGUFVocab:
    """The GGUF vocabulary of the ``spm.model`` in ``model_dir`` (a stage-20 dir or any checkpoint dir), refused in
    one line when llama.cpp could not reproduce its ids."""
    source = Path(model_dir) / SPM_MODEL
    if not source.is_file():
        raise LumiError(f"{model_dir}: no {SPM_MODEL} (export needs the SentencePiece model the tokenizer was trained "
                        "as; every lumi checkpoint carries it)")
    try:
        proto = model_pb2.ModelProto.FromString(source.read_bytes())
    except Exception as exc:  # protobuf's DecodeError and friends
        raise LumiError(f"{source}: not a SentencePiece model ({type(exc).__name__})") from None
    pieces = list(proto.pieces)
    verify_special_ids(lambda i: pieces[i].piece if i < len(pieces) else "<missing>", str(source))
    _check_settings(proto, source)
    formable = _formable(pieces)
    if formable:
        raise LumiError(f"{source}: llama.cpp would merge text into the special piece(s) "
                        f"{', '.join(map(repr, formable[:5]))} (two normal pieces spell them), so texts containing "
                        "them literally would tokenize differently; "
                        f"{RETRAIN_BPE} on a corpus where that text is rarer")
    return build_vocab(proto)


def build_vocab(proto: model_pb2.ModelProto) -> GGUFVocab:
    """The GGUF vocabulary of a SentencePiece model, unchecked (``benchmarks/bench_tokenizer_export.py`` measures
    what the refused settings would give)."""
    pieces = list(proto.pieces)
    types = [CONTROL if p.piece in CHAT_MARKERS else TOKEN_TYPES[p.type] for p in pieces]
    return GGUFVocab(tokens=[p.piece for p in pieces], scores=[p.score for p in pieces], types=types)
