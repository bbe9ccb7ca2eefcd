"""Stage 20's machinery (its command line is ``lumi/stages/tokenizer.py``): train the SentencePiece tokenizer on a
corpus and export it for transformers.

The output directory holds ``spm.model`` (+ ``spm.vocab``), the transformers files (``tokenizer.json``,
``tokenizer_config.json``), ``tokenizer_meta.json`` and ``validation_report.json``. Choices every later stage relies on:

* **Ids.** pad 0, unk 1, bos 2, eos 3 (SentencePiece control pieces), ``<|im_start|>`` 4, ``<|im_end|>`` 5
  (user-defined pieces: always one token) -- checked after training and on every load.
* **Exact round trip.** Identity normalization, no dummy prefix, no whitespace collapsing, byte fallback (no
  ``<unk>`` on any UTF-8 input), digits split one per token, all printable ASCII, tab and newline forced into the
  vocabulary. ``decode(encode(text)) == text`` for every text, except that U+2581 (SentencePiece's own space symbol)
  decodes as a space.
* **Newlines** are ordinary characters the trainer sees (documents are fed as multi-line chunks), so it learns pieces
  such as ``".\\n\\n"``; measured on the samples this gives more bytes per token than splitting at lines with a
  dedicated ``"\\n"`` piece or byte-fallback ``<0x0A>``. (So ``spm.vocab``, a listing for people, escapes them.)
* **transformers.** ``AutoTokenizer.from_pretrained(dir)`` gives the ids of ``SentencePieceProcessor.encode``: it adds
  no BOS/EOS (callers add them explicitly, as packing does), ``<|im_start|>``/``<|im_end|>`` in text become ids 4/5
  as in SentencePiece, while ``<s>``, ``</s>``, ``<pad>``, ``<unk>`` in text stay plain text (SentencePiece never
  parses control pieces from text; transformers does unless ``split_special_tokens``). For ``unigram`` the ids agree
  on texts of up to a few thousand characters: SentencePiece sums piece scores in float32, so on longer single inputs
  near-ties can resolve differently from the float64 Viterbi of ``tokenizers`` (``bpe`` has no scores to sum and
  agrees on every input). ``validation_report.json`` records the agreement on held-out text.
"""

from __future__ import annotations

import io
import logging
import re
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Literal

import sentencepiece as spm
from pydantic import Field
from sentencepiece import sentencepiece_model_pb2 as model_pb2

from lumi.core.config import ConfigModel, config_to_dict
from lumi.core.errors import LumiError
from lumi.core.files import (atomic_write_bytes, atomic_write_json, atomic_write_text, sha256_file,
                             staged_output_dir)
from lumi.core.hashing import text_draws
from lumi.core.special_tokens import (BOS_ID, BOS_TOKEN, CHAT_MARKERS, EOS_ID, EOS_TOKEN, PAD_ID, PAD_TOKEN,
                                      SPECIAL_IDS, UNK_ID, UNK_TOKEN)
from lumi.core.stage_args import available_cores
from lumi.formats.corpus import MANIFEST, iter_text_batches, read_manifest
from lumi.formats.tokenizer import (HASHED_FILES, META, REPORT, SPM_MODEL, SPM_VOCAB, TOKENIZER_FORMAT,
                                    load_hf_tokenizer, load_sentencepiece, verify_special_ids)

# tokenizers/transformers are imported inside the functions that need them: transformers takes seconds to import, and
# the stages that only load the SentencePiece model (packing, training) should not pay for it.
if TYPE_CHECKING:
    from tokenizers import Tokenizer

logger = logging.getLogger(__name__)


MIN_VOCAB_SIZE = 384  # 256 byte pieces + 6 special ids + ~96 forced characters, with room for a few merges
# Every printable ASCII character, tab and newline is a piece of its own, whatever the corpus: English and code never
# fall back to bytes for them, and (for unigram) the characters of <s>, <0x41>, ... are always matchable, which the
# transformers export relies on (see _hf_backend).
REQUIRED_CHARS = "\t\n" + "".join(chr(c) for c in range(0x21, 0x7F))
# For unigram, SentencePiece and tokenizers agree exactly on inputs up to this many characters (float32 score sums in
# SentencePiece, see the module docstring); validation refuses any disagreement below it.
UNIGRAM_EXACT_CHARS = 2000
# Tricky inputs on which transformers must give exactly SentencePiece's ids and decoding.
PROBE_TEXTS = (
    "<s>", "</s>", "<pad>", "<unk>", "<0x41>", "a<s>b</s>", "<|im_start|><s><|im_end|>",
    "<|im_start|>user\nHello!<|im_end|>\n<|im_start|>assistant\n",
    "  leading and trailing spaces  ", "tabs\tand\r\nwindows\r\nlines\n\n\n", "\u00a0no-break\u3000ideographic\u2028",
    "digits 1234567890 3.14159 -42", "emoji 😀👍🏽 🇫🇷", "中文 日本語 한국어", "zero\u200bwidth\u200djoiner",
    "“curly” ‘quotes’ — dashes – … ﬁ", "\x00\x07\x7f control chars",
)

Piece = model_pb2.ModelProto.SentencePiece


class TokenizerConfig(ConfigModel):
    """Training settings for stage 20 (``config/pretrain/tokenizer/*.json``)."""

    vocab_size: int = Field(32000, ge=MIN_VOCAB_SIZE, le=1 << 20,
                            description="pieces in the vocabulary, special and byte pieces included")
    model_type: Literal["unigram", "bpe"] = Field("unigram", description="SentencePiece algorithm")
    character_coverage: float = Field(0.9995, gt=0, le=1,
                                      description=("share of the sample's characters covered by pieces; the rest fall "
                                                   "back to bytes"))
    byte_fallback: bool = Field(True,
                                description=("encode characters outside the vocabulary as UTF-8 byte pieces (never "
                                             "<unk>)"))
    split_digits: bool = Field(True, description="one token per digit")
    input_sentence_size: int = Field(1_000_000, ge=1, description="most training chunks given to SentencePiece")
    max_training_bytes: int = Field(250_000_000, ge=1, description="most UTF-8 bytes given to SentencePiece")
    max_sentence_length: int = Field(4096, ge=256, le=1 << 20, description="bytes per training chunk")
    holdout_fraction: float = Field(0.01, gt=0, le=0.5, description="share of the text kept out of training for "
                                                                    "validation (documents, or blocks of long ones)")
    max_validation_bytes: int = Field(8_000_000, ge=1, description="held-out bytes used for validation")
    seed: int = Field(1234, ge=0, lt=1 << 64, description="seeds the held-out split and the training sample")
    num_threads: int = Field(0, ge=0, description="0 = every core this process may use")


# --- the training sample

def chunk_document(text: str, max_bytes: int) -> Iterator[str]:
    """Cut ``text`` into consecutive pieces of at most ``max_bytes`` UTF-8 bytes (SentencePiece silently skips longer
    sentences): at line ends where possible, else before a space, else anywhere. The pieces concatenate to ``text``."""
    chunk: list[str] = []
    size = 0
    for unit in _split_units(text, max_bytes):
        unit_bytes = len(unit.encode("utf-8"))
        if chunk and size + unit_bytes > max_bytes:
            yield "".join(chunk)
            chunk, size = [], 0
        chunk.append(unit)
        size += unit_bytes
    if chunk:
        yield "".join(chunk)


def _split_units(text: str, max_bytes: int) -> Iterator[str]:
    for line in text.splitlines(keepends=True):
        if len(line.encode("utf-8")) <= max_bytes:
            yield line
            continue
        for word in re.split(r"(?= )", line):  # before a space: the next chunk starts like a word does ("▁word")
            if len(word.encode("utf-8")) <= max_bytes:
                yield word
                continue
            step = max_bytes // 4  # a character is at most 4 UTF-8 bytes
            yield from (word[i:i + step] for i in range(0, len(word), step))


# Held-out text is drawn in units: a document whole, or -- when it is longer than the block size -- each block of it
# on its own. Whole documents alone cannot validate a corpus of a few books (three documents, one of them half the
# bytes) or of one giant document among small ones; blocks sized so the expected held-out share spans about
# HELDOUT_BLOCKS_EXPECTED units work for any corpus, while a web corpus of documents shorter than the block is still
# held out document by document.
HELDOUT_BLOCKS_EXPECTED = 16
MIN_BLOCK_BYTES, MAX_BLOCK_BYTES = 1024, 64 << 10


def holdout_block_bytes(total_bytes: int, holdout_fraction: float) -> int:
    """Documents longer than this many bytes are held out (or not) block by block."""
    return int(min(MAX_BLOCK_BYTES, max(MIN_BLOCK_BYTES, total_bytes * holdout_fraction / HELDOUT_BLOCKS_EXPECTED)))


def holdout_units(text: str, block_bytes: int) -> Iterator[str]:
    """``text`` whole when it fits ``block_bytes`` (UTF-8), else its consecutive blocks (cut at line ends)."""
    if len(text) * 4 <= block_bytes or len(text.encode("utf-8")) <= block_bytes:
        yield text
    else:
        yield from chunk_document(text, block_bytes)


class CorpusSample:
    """One streaming pass over a corpus directory: iterating yields the training chunks for SentencePiece (a seeded
    sample bounded by ``max_training_bytes`` and ``input_sentence_size``) and collects the held-out texts (bounded
    by ``max_validation_bytes``). Memory holds only the held-out texts (and one reserved unit, below).

    Each unit (a document, or a block of a long one: ``holdout_units``) is held out when its keyed hash draw is below
    ``holdout_fraction``. So that validation never comes up empty on a small corpus, the training unit with the
    lowest draw is kept back until some unit has been held out for validation; if none ever is, that unit becomes
    the validation text (``forced_heldout``) instead of being trained on."""

    def __init__(self, corpus_dir: Path, config: TokenizerConfig):
        self.corpus_dir = Path(corpus_dir)
        self.config = config
        manifest = read_manifest(self.corpus_dir)
        self.total_bytes = sum(int(shard["bytes"]) for shard in manifest["shards"])
        self.total_documents = sum(int(shard["documents"]) for shard in manifest["shards"])
        if self.total_bytes == 0:
            raise LumiError(f"{self.corpus_dir}: corpus is empty (no text to train a tokenizer on)")
        self.block_bytes = holdout_block_bytes(self.total_bytes, config.holdout_fraction)
        # Sampling probabilities aimed at the caps, so a capped sample is spread over the whole corpus, not its head.
        train_fraction = 1 - config.holdout_fraction
        self.train_probability = min(1.0, config.max_training_bytes / (self.total_bytes * train_fraction),
                                     config.input_sentence_size / (self.total_documents * train_fraction))
        self.validation_probability = min(1.0, config.max_validation_bytes /
                                          (self.total_bytes * config.holdout_fraction))
        self.heldout: list[str] = []
        self.heldout_bytes = 0
        self.forced_heldout = False
        self.documents = self.sentences = self.bytes = 0  # documents: training units (documents or blocks)
        self._reserve: tuple[float, float, str] | None = None  # (held-out draw, sample draw, text)
        self.error: LumiError | None = None  # raised while SentencePiece iterated, which reports it as its own

    def __iter__(self) -> Iterator[str]:
        try:
            yield from self._units()
        except LumiError as exc:  # a damaged shard: keep our one-line message for train_sentencepiece to re-raise
            self.error = exc
            raise

    def _training_full(self) -> bool:
        return self.sentences >= self.config.input_sentence_size or self.bytes >= self.config.max_training_bytes

    def _validation_full(self) -> bool:
        return self.heldout_bytes >= self.config.max_validation_bytes

    def _hold_out(self, text: str) -> None:
        self.heldout.append(text)
        self.heldout_bytes += len(text.encode("utf-8"))

    def _train(self, text: str, sample_draw: float) -> Iterator[str]:
        if sample_draw >= self.train_probability or self._training_full():
            return
        self.documents += 1
        for chunk in chunk_document(text, self.config.max_sentence_length):
            if self._training_full():
                break
            self.sentences += 1
            self.bytes += len(chunk.encode("utf-8"))
            yield chunk

    def _route(self, unit: str) -> Iterator[str]:
        heldout_draw, sample_draw = text_draws(unit, self.config.seed)  # held out?, sampled?
        if heldout_draw < self.config.holdout_fraction:
            if sample_draw < self.validation_probability and not self._validation_full():
                self._hold_out(unit)
                if self._reserve is not None:  # validation has a text: the reserved unit trains after all
                    _, reserved_draw, reserved = self._reserve
                    self._reserve = None
                    yield from self._train(reserved, reserved_draw)
            return
        if not self.heldout and (self._reserve is None or heldout_draw < self._reserve[0]):
            previous, self._reserve = self._reserve, (heldout_draw, sample_draw, unit)
            if previous is None:
                return
            _, sample_draw, unit = previous
        yield from self._train(unit, sample_draw)

    def _units(self) -> Iterator[str]:
        for batch in iter_text_batches(self.corpus_dir):
            for text in batch:
                for unit in holdout_units(text, self.block_bytes) if text else ():
                    yield from self._route(unit)
            if self._training_full() and self._validation_full():
                break
        self.finish()

    def finish(self) -> None:
        """End of the pass: if nothing was held out by chance, the reserved unit validates (idempotent)."""
        if self._reserve is not None:
            self._hold_out(self._reserve[2])
            self.forced_heldout = True
            self._reserve = None

    def heldout_summary(self) -> dict[str, Any]:
        """What was held out for validation and how it was chosen (tokenizer_meta.json and the log)."""
        return {"texts": len(self.heldout), "bytes": self.heldout_bytes,
                "share_of_corpus_bytes": round(self.heldout_bytes / self.total_bytes, 6),
                "block_bytes": self.block_bytes, "forced": self.forced_heldout,
                "rule": f"documents up to {self.block_bytes} bytes whole, longer ones in blocks of that size, each "
                        f"held out with probability {self.config.holdout_fraction}"
                        + ("; none was by chance, so the training text with the lowest draw was held out instead"
                           if self.forced_heldout else "")}


# --- training

def train_sentencepiece(sample: CorpusSample, config: TokenizerConfig, num_threads: int) -> bytes:
    """Train on the sample and return the serialized model."""
    model = io.BytesIO()
    spm.set_random_generator_seed(config.seed)
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(sample),
            model_writer=model,
            model_type=config.model_type,
            vocab_size=config.vocab_size,
            character_coverage=config.character_coverage,
            byte_fallback=config.byte_fallback,
            split_digits=config.split_digits,
            max_sentence_length=config.max_sentence_length,
            num_threads=num_threads,
            normalization_rule_name="identity",
            add_dummy_prefix=False,
            remove_extra_whitespaces=False,
            allow_whitespace_only_pieces=True,
            required_chars=REQUIRED_CHARS,
            pad_id=PAD_ID, unk_id=UNK_ID, bos_id=BOS_ID, eos_id=EOS_ID,
            pad_piece=PAD_TOKEN, unk_piece=UNK_TOKEN, bos_piece=BOS_TOKEN, eos_piece=EOS_TOKEN,
            user_defined_symbols=list(CHAT_MARKERS),
            unk_surface=UNK_TOKEN,  # how <unk> decodes (only without byte fallback), as in transformers
            minloglevel=0 if logger.isEnabledFor(logging.DEBUG) else 1,
        )
    except RuntimeError as exc:  # SentencePiece reports bad settings (vocab too large for the corpus ...) this way
        if sample.error is not None:
            raise sample.error from None
        if sample.sentences == 0:
            raise LumiError(f"{sample.corpus_dir}: too little text ({sample.total_bytes} bytes) to train on and also "
                            "hold some out for validation; use a larger corpus") from None
        raise LumiError(f"SentencePiece training on {sample.corpus_dir} failed: {exc}") from None
    return model.getvalue()


def vocab_listing(sp: spm.SentencePieceProcessor) -> str:
    """``spm.vocab``: one ``piece<TAB>score`` line per id, for people. SentencePiece's own listing writes pieces raw,
    and pieces containing newlines would break its lines, so backslash, tab, CR and LF are escaped here."""
    escapes = str.maketrans({"\\": "\\\\", "\t": "\\t", "\r": "\\r", "\n": "\\n"})
    return "".join(f"{sp.id_to_piece(i).translate(escapes)}\t{sp.get_score(i):g}\n" for i in range(sp.get_piece_size()))


# --- transformers export

def _hf_backend(proto: model_pb2.ModelProto) -> Tokenizer:
    """A ``tokenizers.Tokenizer`` that encodes like ``SentencePieceProcessor`` for the settings this stage trains with.

    Hand-built because transformers' generic SentencePiece converters differ from SentencePiece on control and byte
    pieces that occur as text and have changed across 5.x (``LlamaTokenizer(vocab_file=...)`` silently builds a broken
    tokenizer). SentencePiece never matches control, unknown or byte pieces in text; ``tokenizers`` matches every
    vocabulary string. For BPE no merge produces them, so they are unreachable. For unigram their score is lowered
    below any path of single characters over the same span (every character of these names is a forced piece, see
    REQUIRED_CHARS), which makes Viterbi never choose them; byte fallback looks byte pieces up by name, unaffected.
    The chat markers are added tokens matched on the raw text, like SentencePiece's user-defined pieces.
    """
    from tokenizers import AddedToken, Tokenizer, decoders, normalizers
    from tokenizers.models import BPE, Unigram
    from transformers.tokenization_utils_base import generate_merges

    pieces = list(proto.pieces)
    byte_fallback = proto.trainer_spec.byte_fallback
    if proto.trainer_spec.model_type == model_pb2.TrainerSpec.UNIGRAM:
        from_text = (Piece.NORMAL, Piece.USER_DEFINED)
        lowest = min(p.score for p in pieces if p.type == Piece.NORMAL)
        never = lowest * (max(len(p.piece) for p in pieces if p.type not in from_text) + 1)
        model = Unigram([(p.piece, p.score if p.type in from_text else never) for p in pieces],
                        unk_id=UNK_ID, byte_fallback=byte_fallback)
    else:
        normal_ids = {p.piece: i for i, p in enumerate(pieces) if p.type == Piece.NORMAL}
        # SentencePiece BPE merges the adjacent pair whose result scores highest: rank merges by that score.
        merges = generate_merges(normal_ids, vocab_scores={p.piece: p.score for p in pieces if p.type == Piece.NORMAL})
        model = BPE({p.piece: i for i, p in enumerate(pieces)}, merges, unk_token=UNK_TOKEN, fuse_unk=True,
                    byte_fallback=byte_fallback)
    backend = Tokenizer(model)
    backend.normalizer = normalizers.Replace(" ", "▁")
    backend.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False)
                                for t in (PAD_TOKEN, UNK_TOKEN, BOS_TOKEN, EOS_TOKEN)])
    backend.add_tokens([AddedToken(t, special=False, normalized=False) for t in CHAT_MARKERS])
    return backend


def export_hf_tokenizer(model_path: Path, output_dir: Path) -> None:
    """Write ``tokenizer.json`` and ``tokenizer_config.json`` next to the SentencePiece model."""
    from transformers import PreTrainedTokenizerFast

    proto = model_pb2.ModelProto.FromString(model_path.read_bytes())
    hf = PreTrainedTokenizerFast(
        tokenizer_object=_hf_backend(proto),
        bos_token=BOS_TOKEN, eos_token=EOS_TOKEN, unk_token=UNK_TOKEN, pad_token=PAD_TOKEN,
        add_bos_token=False, add_eos_token=False,  # encode(text) == SentencePiece's encode(text)
        split_special_tokens=True,  # <s> etc. in text are plain text, as in SentencePiece
        clean_up_tokenization_spaces=False,
    )
    hf.save_pretrained(str(output_dir))


# --- validation

def validate_tokenizer(directory: Path, heldout: list[str], model_type: str, num_threads: int) -> dict[str, Any]:
    """Measure the tokenizer on held-out texts and check that transformers and SentencePiece agree; refuse a
    disagreement where exact agreement is guaranteed (any probe text; any held-out text for BPE, texts up to
    UNIGRAM_EXACT_CHARS characters for unigram)."""
    sp = load_sentencepiece(directory)
    hf = load_hf_tokenizer(directory)
    spm_ids = sp.encode(heldout, num_threads=num_threads)
    hf_ids = hf(heldout)["input_ids"]
    total_bytes = sum(len(text.encode("utf-8")) for text in heldout)
    total_tokens = sum(len(ids) for ids in spm_ids)
    byte_pieces = {i for i in range(sp.get_piece_size()) if sp.is_byte(i)}
    exact_limit = UNIGRAM_EXACT_CHARS if model_type == "unigram" else None
    disagreements = [i for i, (a, b) in enumerate(zip(spm_ids, hf_ids)) if a != b]
    guaranteed = [i for i in disagreements if exact_limit is None or len(heldout[i]) <= exact_limit]
    for text in PROBE_TEXTS:
        expected = sp.encode(text)
        if hf(text)["input_ids"] != expected or hf.decode(expected) != sp.decode(expected):
            raise RuntimeError(f"transformers and SentencePiece disagree on probe text {text!r}")
    if guaranteed:
        text = heldout[guaranteed[0]]
        raise RuntimeError(f"transformers and SentencePiece disagree on {len(guaranteed)} held-out document(s), "
                           f"first: {text[:200]!r}")
    return {
        "documents": len(heldout),
        "bytes": total_bytes,
        "tokens": total_tokens,
        "bytes_per_token": total_bytes / max(total_tokens, 1),
        "unk_rate": sum(ids.count(UNK_ID) for ids in spm_ids) / max(total_tokens, 1),
        "byte_fallback_rate": sum(sum(t in byte_pieces for t in ids) for ids in spm_ids) / max(total_tokens, 1),
        "roundtrip_exact_fraction": sum(sp.decode(ids) == text for ids, text in zip(spm_ids, heldout)) / len(heldout),
        "hf_roundtrip_exact_fraction": sum(hf.decode(ids) == text for ids, text in zip(hf_ids, heldout)) / len(heldout),
        "hf_id_agreement_fraction": 1 - len(disagreements) / len(heldout),
        "hf_disagreeing_documents_chars": sorted(len(heldout[i]) for i in disagreements),
        "hf_exact_guaranteed_up_to_chars": exact_limit,
        "hf_probe_texts_checked": len(PROBE_TEXTS),
    }


# --- the stage

def train_tokenizer(corpus_dir: Path, output_dir: Path, config: TokenizerConfig, force: bool = False) -> dict[str, Any]:
    """Train, export, validate and write the tokenizer directory; returns the validation report."""
    import tokenizers
    import transformers

    corpus_dir = Path(corpus_dir)
    num_threads = config.num_threads or available_cores()
    with staged_output_dir(output_dir, force) as staging:
        sample = CorpusSample(corpus_dir, config)
        logger.info("training a %d-piece %s model on a sample of %s (%d threads)", config.vocab_size,
                    config.model_type, corpus_dir, num_threads)
        started = time.monotonic()
        model = train_sentencepiece(sample, config, num_threads)
        sample.finish()
        seconds = time.monotonic() - started
        logger.info("trained in %.1fs on %d chunks (%d bytes) of %d documents or blocks", seconds, sample.sentences,
                    sample.bytes, sample.documents)
        heldout = sample.heldout_summary()
        logger.info("validation: %d held-out texts, %d bytes (%.2f%% of the corpus): %s", heldout["texts"],
                    heldout["bytes"], 100 * heldout["share_of_corpus_bytes"], heldout["rule"])
        atomic_write_bytes(staging / SPM_MODEL, model)
        sp = spm.SentencePieceProcessor(model_proto=model)
        atomic_write_text(staging / SPM_VOCAB, vocab_listing(sp))
        verify_special_ids(sp.id_to_piece, str(staging / SPM_MODEL))
        export_hf_tokenizer(staging / SPM_MODEL, staging)
        file_digests = {name: sha256_file(staging / name) for name in HASHED_FILES}
        meta = {
            "format": TOKENIZER_FORMAT,
            "sha256": file_digests[SPM_MODEL],
            "files": file_digests,
            "vocab_size": sp.get_piece_size(),
            "model_type": config.model_type,
            "special_tokens": dict(SPECIAL_IDS),
            "hf_encoding": {"adds_bos": False, "adds_eos": False, "chat_markers_from_text": True,
                            "control_tokens_from_text": False},
            "normalization": {"rule": "identity", "add_dummy_prefix": False, "remove_extra_whitespaces": False,
                              "byte_fallback": config.byte_fallback, "split_digits": config.split_digits,
                              "newline": "ordinary character learned by the trainer"},
            "training": {"documents": sample.documents, "sentences": sample.sentences, "bytes": sample.bytes,
                         "heldout_documents": len(sample.heldout), "heldout": heldout, "seconds": round(seconds, 3),
                         "num_threads": num_threads, "sentencepiece": spm.__version__,
                         "tokenizers": tokenizers.__version__, "transformers": transformers.__version__},
            "config": config_to_dict(config),
            "corpus": {"dir": str(corpus_dir.resolve()), "manifest_sha256": sha256_file(corpus_dir / MANIFEST)},
        }
        atomic_write_json(staging / META, meta)
        report = validate_tokenizer(staging, sample.heldout, config.model_type, num_threads)
        atomic_write_json(staging / REPORT, report)
    return report
