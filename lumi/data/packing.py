"""Stage 30's machinery (its command line is ``lumi/stages/pack.py``): tokenize a corpus directory and pack it into
fixed-length rows (format: ``lumi/formats/packed.py``).

Every document becomes ``BOS tokens... EOS``; documents go to ``train`` or ``val`` whole (a seeded hash of the
document index decides), each split's documents are concatenated in corpus order and written as a flat token stream,
and the stream is cut into rows of ``seq_len`` tokens.

The val split must be large enough to measure: its share of the corpus is ``val_fraction``, raised to reach
``min_val_tokens`` (estimated from the bytes per token of the first batch) but to no more than
``MAX_FLOOR_FRACTION``. Whole documents cannot give that share when there are few of them or one dwarfs the rest
(three books, or one holding half the bytes), so a document longer than ``split_bytes`` (see ``val_split_plan``) is
split by bytes: its last ``share`` of bytes, cut at a line end, becomes a val document of its own and the rest a
train document, each with its own BOS and EOS (the nanoGPT split of a single text, one seam per split document).
The choice is logged and recorded as ``val_split``.

The tail that does not fill a last row is dropped (at most ``seq_len - 1`` tokens per split, recorded as
``dropped_tail_tokens``): padding it would need a loss mask that the format does not carry, for a negligible gain. A
split's ``bytes`` (the bits-per-byte denominator) counts the text its rows hold, so the dropped tail is left out of it
too (``dropped_tail_bytes``); ``documents`` counts every document routed to the split (one split by bytes counts in
both).

Memory stays bounded whatever the corpus size: texts are streamed in batches from the corpus shards and tokens are
appended to the ``.bin`` files as they are produced. SentencePiece's working memory, which grows with the text it
encodes, stays bounded whatever the longest document: a document longer than ``PART_CHARS`` is encoded in parts cut
where the ids cannot change (``DocumentEncoder``). What still grows with the longest document is its text (as read
from its shard, or the head and tail of a split) and its ids: ~9 bytes per byte of it, against ~28 before
(benchmarks/bench_packing.py --long-mb).
"""

from __future__ import annotations

import itertools
import logging
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Iterator, TypeVar

import numpy as np
import sentencepiece as spm
from pydantic import Field
from sentencepiece import sentencepiece_model_pb2 as model_pb2
from tqdm import tqdm

from lumi.core import special_tokens
from lumi.core.config import ConfigModel, config_to_dict
from lumi.core.errors import LumiError
from lumi.core.files import atomic_write_json, sha256_file, staged_output_dir
from lumi.core.hashing import index_uniforms
from lumi.core.stage_args import available_cores
from lumi.formats.corpus import MANIFEST as CORPUS_MANIFEST
from lumi.formats.corpus import iter_text_batches, read_manifest
from lumi.formats.lineage import WORLDS_KEY, artifact_worlds
from lumi.formats.packed import MANIFEST, PACKED_FORMAT, SPLITS, spm_model_sha256, token_dtype
from lumi.formats.tokenizer import SPM_MODEL as TOKENIZER_MODEL
from lumi.formats.tokenizer import load_sentencepiece

log = logging.getLogger(__name__)

LABELS = ("unshifted: each row is both input_ids and labels; the model shifts them by one position when it computes "
          "the loss (exactly once)")


class PackingConfig(ConfigModel):
    seq_len: int = Field(1024, ge=8, le=1 << 20, description="tokens per training row")
    val_fraction: float = Field(0.005, ge=0.0, le=0.5,
                                description=("share of the corpus held out for validation and bits-per-byte: whole "
                                             "documents chosen by a seeded hash; a document longer than a quarter of "
                                             "the corpus or 1/32 of the val split (and 64 KiB) gives its last share "
                                             "of bytes instead"))
    min_val_tokens: int = Field(131072, ge=0, description="floor on the val split: val_fraction is raised to reach "
                                                          "this many tokens, up to 10% of the corpus (0: no floor)")
    seed: int = Field(1234, description="seeds the document-level train/val split")
    batch_docs: int = Field(2048, ge=1, le=1 << 20, description="documents per read/encode batch (bounds memory)")
    num_threads: int = Field(0, ge=0, description="encoding threads; 0 = all available cores")


# --- tokenizer -------------------------------------------------------------------------------------------------

def load_packing_tokenizer(tokenizer_dir: Path, verify: bool = True) -> tuple[spm.SentencePieceProcessor, str]:
    """The SentencePiece model of a stage-20 directory and its sha256, its special-token ids checked against
    ``lumi/core/special_tokens.py``. ``verify`` adds stage 20's integrity check (every model file must match the
    hashes in ``tokenizer_meta.json``), so a model swapped or edited after training is refused instead of silently
    producing other ids; without it only ``spm.model`` is needed."""
    try:
        processor = load_sentencepiece(tokenizer_dir, check_integrity=verify)
    except LumiError as exc:
        if not verify or not (tokenizer_dir / TOKENIZER_MODEL).is_file():
            raise
        raise LumiError(f"{exc}; pass --skip-tokenizer-check to pack with it anyway") from None
    # Packing adds BOS/EOS through SentencePiece's own control ids: they must be the layout's, not just the pieces.
    if (processor.bos_id(), processor.eos_id()) != (special_tokens.BOS_ID, special_tokens.EOS_ID):
        raise LumiError(f"{tokenizer_dir / TOKENIZER_MODEL}: bos/eos ids {processor.bos_id()}/{processor.eos_id()}, "
                        f"expected {special_tokens.BOS_ID}/{special_tokens.EOS_ID} (lumi/core/special_tokens.py)")
    return processor, spm_model_sha256(tokenizer_dir)


# --- train/val split -------------------------------------------------------------------------------------------

class DocumentSplitter:
    """Assigns each document index to val with probability ``val_fraction``, deterministically for a seed.

    With ``val_fraction > 0`` and at least two documents, the document with the smallest key is always val and the one
    with the largest key always train, so neither split is empty however small the corpus; a lone document trains.
    """

    def __init__(self, total_documents: int, seed: int, val_fraction: float, chunk: int = 1 << 20):
        self.val_fraction = val_fraction if total_documents >= 2 else 0.0
        self.seed = seed
        self.forced_val = self.forced_train = -1
        if self.val_fraction > 0:
            lowest = (np.inf, -1)
            highest = (-np.inf, -1)
            for start in range(0, total_documents, chunk):  # chunked: O(1) memory for any corpus size
                keys = self.keys(start, min(chunk, total_documents - start))
                low, high = int(keys.argmin()), int(keys.argmax())
                lowest = min(lowest, (keys[low], start + low))
                highest = max(highest, (keys[high], start + high))
            self.forced_val, self.forced_train = lowest[1], highest[1]

    def keys(self, start: int, count: int) -> np.ndarray:
        """A uniform number in [0, 1) per document index."""
        return index_uniforms(self.seed, start, count)

    def val_mask(self, start: int, count: int) -> np.ndarray:
        mask = self.keys(start, count) < self.val_fraction
        for index, value in ((self.forced_val, True), (self.forced_train, False)):
            if start <= index < start + count:
                mask[index - start] = value
        return mask


# Documents longer than this share of the expected val bytes, or than a quarter of the corpus, are split by bytes:
# held out whole they would make the val split lumpy (one document could be most of it, or all of it be missing).
VAL_PIECES_EXPECTED = 32
MIN_SPLIT_BYTES = 64 << 10  # never split a document shorter than this (a web page is held out whole)
MAX_FLOOR_FRACTION = 0.1  # min_val_tokens never takes more than this share of the corpus from training


def val_split_plan(config: PackingConfig, total_bytes: int, total_documents: int,
                   bytes_per_token: float) -> dict[str, Any]:
    """How much to hold out and how: the share of the corpus, and the document length above which a document is
    split by bytes rather than routed whole. Recorded in the manifest as ``val_split``."""
    estimated_tokens = total_bytes / bytes_per_token
    share, reason = config.val_fraction, "val_fraction"
    if 0 < share and config.min_val_tokens > share * estimated_tokens:
        share = max(share, min(MAX_FLOOR_FRACTION, config.min_val_tokens / estimated_tokens))
        reason = (f"val_fraction {config.val_fraction:g} raised to reach min_val_tokens {config.min_val_tokens:,}"
                  + (f", capped at {MAX_FLOOR_FRACTION:.0%} of the corpus" if share == MAX_FLOOR_FRACTION else ""))
    split_bytes = int(min(max(MIN_SPLIT_BYTES, total_bytes * share / VAL_PIECES_EXPECTED), total_bytes / 4))
    return {"share": share, "reason": reason, "estimated_corpus_tokens": round(estimated_tokens),
            "estimated_val_tokens": round(share * estimated_tokens), "split_documents_over_bytes": split_bytes,
            "documents": total_documents}


def split_tail(text: str, share: float) -> tuple[str, str]:
    """(head, tail) of ``text`` with the tail about ``share`` of its UTF-8 bytes, cut after a line end where there is
    one near the target, else after a space, else at a character. Both parts are non-empty."""
    data = text.encode("utf-8")
    target = min(max(1, round(len(data) * (1 - share))), len(data) - 1)
    for separator in (b"\n", b" "):
        for cut in (data.find(separator, target), data.rfind(separator, 0, target)):
            if 0 < cut + 1 < len(data):
                return data[:cut + 1].decode("utf-8"), data[cut + 1:].decode("utf-8")
    at = min(max(1, round(len(text) * (1 - share))), len(text) - 1)
    return text[:at], text[at:]


def route_batch(texts: list[str], is_val: np.ndarray, plan: dict[str, Any]) -> tuple[list[str], list[str], int]:
    """(train texts, val texts, documents split by bytes) of one batch, in corpus order. A document split by bytes is
    replaced by None in ``texts``: its head and tail are copies, and the whole text need not be held beside them."""
    train, val, split = [], [], 0
    limit, share = plan["split_documents_over_bytes"], plan["share"]
    for index, (text, to_val) in enumerate(zip(texts, is_val)):
        if share > 0 and len(text) * 4 > limit and len(text.encode("utf-8")) > limit and len(text) > 1:
            head, tail = split_tail(text, share)
            train.append(head)
            val.append(tail)
            split += 1
            texts[index] = None
        else:
            (val if to_val else train).append(text)
    return train, val, split


def bytes_per_token(processor: spm.SentencePieceProcessor, texts: list[str], sample_chars: int = 1 << 20) -> float:
    """Measured on (at most ``sample_chars`` characters of) ``texts``: what turns the corpus size into tokens."""
    head, size = [], 0
    for text in texts:  # joins only what the sample needs, not a whole long document
        if size >= sample_chars:
            break
        head.append(text[:sample_chars - size])
        size += len(head[-1])
    sample = "".join(head)
    tokens = len(processor.encode(sample)) if sample else 0
    return len(sample.encode("utf-8")) / tokens if tokens else 4.0


# --- encoding --------------------------------------------------------------------------------------------------

PART_CHARS = 1 << 18  # a longer document is encoded in parts of about this many characters
CUT_WINDOW = 4096  # characters searched back from a part's target end for a safe cut


class DocumentEncoder:
    """``BOS ids EOS`` of each document; one longer than ``part_chars`` is encoded in parts, cut at positions that no
    vocabulary piece can span, and the parts' ids are concatenated between one BOS and one EOS.

    Why such a cut leaves the ids unchanged: SentencePiece segments the normalized text into vocabulary pieces, plus
    single characters outside the vocabulary (unknown, or their UTF-8 bytes with byte fallback). Unigram takes the
    best-scoring path through the lattice of every piece matching at every position; BPE merges adjacent symbols, and
    every merge result is a vocabulary piece. A position that no piece occurring in the text spans is therefore a
    boundary of every candidate segmentation: BPE never merges across it, and unigram's best path is the best path of
    the text before it followed by the best path of the text after it. That needs a normalizer that maps characters
    one by one, as stage 20's does (identity rules, no dummy prefix, no whitespace removal); with any other model, or a
    word/char model, long documents are encoded whole (memory then grows with the longest one) and a warning says so.

    One caveat, unigram only: SentencePiece sums path scores in float32, so where two segmentations of a span score
    within float32 resolution of the running total (which differs between the whole document and a part), the tie
    can resolve either way (tests/test_packing.py: 32 such spans in 1.3 M tokens of 3.2 MB of books, each score gap
    under 3% of the float32 bound the test derives; at a running total of millions that resolution is a sizeable
    fraction of a nat, so the whole document's choice is not the more exact one). BPE has no sums and gives exactly
    the whole document's ids.
    """

    def __init__(self, processor: spm.SentencePieceProcessor, threads: int, part_chars: int):
        self.processor, self.threads, self.part_chars = processor, threads, part_chars
        proto = model_pb2.ModelProto.FromString(processor.serialized_model_proto())
        spec = proto.normalizer_spec
        self.whole_reason = (
            "it is not a unigram or BPE model" if proto.trainer_spec.model_type not in (
                model_pb2.TrainerSpec.UNIGRAM, model_pb2.TrainerSpec.BPE) else
            "its normalizer is not one character at a time (stage 20's identity rules, no dummy prefix, no "
            "whitespace removal)" if (spec.precompiled_charsmap or spec.add_dummy_prefix
                                      or spec.remove_extra_whitespaces) else None)
        # Every piece (control and byte pieces never match text; keeping them only makes cuts rarer), in text form.
        self.pieces = {piece.piece for piece in proto.pieces}
        self.longest = max(map(len, self.pieces))
        self.space = "\u2581" if spec.escape_whitespaces else " "
        self.warned = False

    def can_cut(self, text: str, at: int) -> bool:
        """No vocabulary piece occurs in ``text`` across position ``at`` (0 < at < len(text))."""
        start = max(0, at - self.longest + 1)
        window = text[start:at + self.longest - 1].replace(" ", self.space)  # what the normalizer makes of spaces
        at -= start
        return not any(window[first:end] in self.pieces for first in range(at)
                       for end in range(at + 1, min(len(window), first + self.longest) + 1))

    def cuts(self, text: str) -> list[int]:
        """Part boundaries of ``text``: ``[0, ..., len(text)]``. A part grows past ``part_chars`` only where no
        safe cut lies in the last ``CUT_WINDOW`` characters before its target end."""
        if self.whole_reason and not self.warned:
            log.warning("the tokenizer cannot encode long documents in parts (%s): each is encoded whole, so memory "
                        "grows with the longest one", self.whole_reason)
            self.warned = True
        bounds, target = [0], self.part_chars
        while target < len(text) and not self.whole_reason:
            cut = next((at for at in range(target, max(bounds[-1], target - CUT_WINDOW), -1)
                        if self.can_cut(text, at)), None)
            if cut is not None:
                bounds.append(cut)
            target = (cut or target) + self.part_chars
        return bounds + [len(text)]

    def encode(self, texts: list[str]) -> list[np.ndarray]:
        """``BOS ids EOS`` of each text."""
        # sentencepiece's batch encode is multi-threaded C++ that releases the GIL and returns int32 buffers
        # (out_type="numpy"): no Python int per token, and BOS/EOS are added in C++ (ids checked in
        # load_packing_tokenizer). Measured on 63 MB, 2 cores (CPU seconds, 3 runs): this 3.7-4.5; Python-int lists +
        # np.fromiter 5.3-5.9; multiprocessing.Pool(2) of single-threaded encoders 4.3-6.4 (pickling texts and
        # tokens). It also beats raw `sp.encode(texts)` to Python lists, the benchmark's baseline
        # (benchmarks/bench_packing.py).
        short = [text for text in texts if len(text) <= self.part_chars]
        encoded = iter(self.processor.encode(short, out_type="numpy", add_bos=True, add_eos=True,
                                             num_threads=self.threads) if short else [])
        return [next(encoded) if len(text) <= self.part_chars else self.encode_long(text) for text in texts]

    def encode_long(self, text: str) -> np.ndarray:
        """``BOS ids EOS`` of a text longer than a part, encoded ``threads`` parts at a time: only those parts are
        copied out of the text at once."""
        bounds = self.cuts(text)
        ids = [np.array([self.processor.bos_id()], dtype=np.int32)]
        for first in range(0, len(bounds) - 1, self.threads):
            group = bounds[first:first + self.threads + 1]
            ids += self.processor.encode([text[a:b] for a, b in zip(group, group[1:])], out_type="numpy",
                                         num_threads=self.threads)
        ids.append(np.array([self.processor.eos_id()], dtype=np.int32))
        return np.concatenate(ids)


# --- writing ---------------------------------------------------------------------------------------------------

class PackedSplitWriter:
    """Appends one split's documents to its flat token file; on close keeps whole rows and drops the tail.

    ``bytes`` counts the UTF-8 text the kept rows hold, so it is the right denominator for bits per byte even when
    the split is small: documents wholly in the dropped tail do not count, and for the document the last row cuts,
    only the part kept counts (``dropped_bytes``). The last documents covering ``seq_len`` tokens are remembered for
    that, never more.
    """

    def __init__(self, directory: Path, name: str, dtype: np.dtype, seq_len: int,
                 processor: spm.SentencePieceProcessor):
        self.name, self.dtype, self.seq_len, self.processor = name, np.dtype(dtype), seq_len, processor
        self.path = directory / f"{name}.bin"
        self._handle = open(self.path, "wb")
        self.tokens = self.documents = self.bytes = 0
        self._recent: deque[tuple[np.ndarray, int]] = deque()  # (tokens, text bytes) of the last documents
        self._recent_tokens = 0

    def __enter__(self) -> "PackedSplitWriter":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._handle.close()  # idempotent; the staged output directory is discarded on error anyway

    def write(self, documents: list[np.ndarray], text_bytes: list[int]) -> None:
        if not documents:
            return
        # One pass: concatenate and narrow to the file dtype (ids < vocab_size, which the dtype holds).
        stream = np.concatenate(documents, dtype=self.dtype, casting="unsafe")
        stream.tofile(self._handle)
        self.tokens += stream.size
        self.documents += len(documents)
        self.bytes += sum(text_bytes)
        self._remember(documents, text_bytes)

    def _remember(self, documents: list[np.ndarray], text_bytes: list[int]) -> None:
        """Keep the fewest newest documents that cover ``seq_len`` tokens (the tail is shorter than that)."""
        first = len(documents)
        covered = 0
        while first > 0 and covered < self.seq_len:
            first -= 1
            covered += documents[first].size
        self._recent.extend(zip(documents[first:], text_bytes[first:]))
        self._recent_tokens += covered
        while self._recent_tokens - self._recent[0][0].size >= self.seq_len:
            self._recent_tokens -= self._recent.popleft()[0].size

    def dropped_bytes(self, document: np.ndarray, kept: int) -> int:
        """UTF-8 bytes of the text of ``document[kept:]`` (``kept`` >= 1), decoding only the tokens from the last kept
        one that is not a byte piece: decoding is piece by piece except that consecutive byte-fallback pieces decode
        together (one character), so this equals the text size minus the decoded kept tokens, without decoding the
        whole of a long document (a Python int per token, and SentencePiece's decoder, would grow with it)."""
        start = kept - 1
        while start > 0 and self.processor.is_byte(int(document[start])):
            start -= 1
        decode = self.processor.decode  # control ids (BOS, EOS) decode to ""
        return (len(decode(document[start:].tolist()).encode("utf-8"))
                - len(decode(document[start:kept].tolist()).encode("utf-8")))

    def close(self) -> dict[str, Any]:
        rows = self.tokens // self.seq_len
        self._handle.truncate(rows * self.seq_len * self.dtype.itemsize)
        self._handle.close()
        tail = self.tokens - rows * self.seq_len
        dropped_bytes = 0
        for document, size in reversed(self._recent):
            if tail == 0:
                break
            cut = min(tail, document.size)
            dropped_bytes += size if cut == document.size else self.dropped_bytes(document, document.size - cut)
            tail -= cut
        return {"file": self.path.name, "sha256": sha256_file(self.path), "rows": rows, "tokens": rows * self.seq_len,
                "documents": self.documents,
                "bytes": self.bytes - dropped_bytes, "dropped_tail_tokens": self.tokens - rows * self.seq_len,
                "dropped_tail_bytes": dropped_bytes}


T = TypeVar("T")


def prefetched(iterable: Iterable[T]) -> Iterator[T]:
    """Produce the next item on a background thread while the caller works on the current one.

    Parquet decoding (pyarrow) and sentencepiece's batch encode both release the GIL, so reading the next batch
    overlaps encoding the current one; a thread avoids the pickling a process pool would pay on every batch.
    """
    iterator = iter(iterable)
    done = object()
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="lumi-pack-reader") as pool:
        pending = pool.submit(next, iterator, done)
        while (item := pending.result()) is not done:
            pending = pool.submit(next, iterator, done)
            yield item


def pack_corpus(corpus_dir: str | Path, tokenizer_dir: str | Path, output_dir: str | Path, config: PackingConfig,
                force: bool = False, verify_tokenizer: bool = True) -> dict[str, Any]:
    """Tokenize ``corpus_dir`` with the tokenizer in ``tokenizer_dir`` and write a packed directory; returns its
    manifest."""
    corpus_dir, tokenizer_dir = Path(corpus_dir), Path(tokenizer_dir)
    processor, tokenizer_hash = load_packing_tokenizer(tokenizer_dir, verify=verify_tokenizer)
    corpus = read_manifest(corpus_dir)
    total = sum(int(shard["documents"]) for shard in corpus["shards"])
    if total == 0:
        raise LumiError(f"{corpus_dir}: the corpus has no documents; nothing to pack")
    dtype = token_dtype(processor.vocab_size())
    total_bytes = sum(int(shard["bytes"]) for shard in corpus["shards"])
    threads = config.num_threads or available_cores()
    encoder = DocumentEncoder(processor, threads, PART_CHARS)
    batches = prefetched(iter_text_batches(corpus_dir, config.batch_docs))
    first = next(batches, [])
    plan = val_split_plan(config, total_bytes, total, bytes_per_token(processor, first))
    splitter = DocumentSplitter(total, config.seed, plan["share"])
    log.info("packing %s (%d documents) with %s: seq_len=%d, %d threads", corpus_dir, total, tokenizer_dir,
             config.seq_len, threads)
    log.info("val split: %.2f%% of the corpus, ~%s of ~%s tokens (%s); documents over %s bytes are split by bytes "
             "(their last %.2f%% to val), shorter ones go whole", 100 * plan["share"],
             f"{plan['estimated_val_tokens']:,}", f"{plan['estimated_corpus_tokens']:,}", plan["reason"],
             f"{plan['split_documents_over_bytes']:,}", 100 * plan["share"])

    with staged_output_dir(output_dir, force) as staging:
        with ExitStack() as stack:
            train, val = (stack.enter_context(PackedSplitWriter(staging, name, dtype, config.seq_len, processor))
                          for name in SPLITS)
            progress = stack.enter_context(tqdm(total=total, unit="doc", desc="pack", disable=None))
            seen = split_documents = 0
            for texts in itertools.chain([first] if first else [], batches):
                routed = route_batch(texts, splitter.val_mask(seen, len(texts)), plan)
                for writer, chosen in zip((train, val), routed[:2]):
                    if chosen:
                        writer.write(encoder.encode(chosen), [len(text.encode("utf-8")) for text in chosen])
                split_documents += routed[2]
                seen += len(texts)
                progress.update(len(texts))
            splits = {"train": train.close(), "val": val.close()}
        plan["documents_split_by_bytes"] = split_documents
        if seen != total:
            raise LumiError(f"{corpus_dir / CORPUS_MANIFEST}: lists {total} documents but the shards hold {seen}")
        if splits["train"]["rows"] == 0:
            raise LumiError(f"{corpus_dir}: too little text for one training row of {config.seq_len} tokens "
                            f"({splits['train']['dropped_tail_tokens']} train tokens); lower --seq-len")
        if splits["val"]["documents"] and not splits["val"]["rows"]:
            log.warning("val split has %d documents but fewer than %d tokens, so no rows; raise val_fraction or "
                        "min_val_tokens", splits["val"]["documents"], config.seq_len)
        manifest = {
            "format": PACKED_FORMAT,
            "seq_len": config.seq_len,
            "dtype": dtype.name,
            "vocab_size": processor.vocab_size(),
            "special_ids": special_tokens.CONTROL_IDS_BY_ROLE,
            "tokenizer_sha256": tokenizer_hash,
            "tokenizer_dir": str(tokenizer_dir.resolve()),
            "labels": LABELS,
            "seed": config.seed,
            "val_fraction": config.val_fraction,
            "val_split": plan,
            "splits": splits,
            "corpus": {"dir": str(corpus_dir.resolve()), "manifest_sha256": sha256_file(corpus_dir / CORPUS_MANIFEST),
                       "documents": total},
            WORLDS_KEY: sorted(artifact_worlds(corpus_dir)),
            "config": config_to_dict(config),
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        atomic_write_json(staging / MANIFEST, manifest)
    for name, info in splits.items():
        log.info("%s: %d rows x %d tokens from %d documents (%d tail tokens dropped)", name, info["rows"],
                 config.seq_len, info["documents"], info["dropped_tail_tokens"])
    return manifest
