"""Stage 60: instruction / chat datasets -> filtered, split, tokenized and packed SFT rows with their loss mask.

Per source: records (a hub dataset through ``datasets.load_dataset``, local JSON/JSONL files, or the synthetic
world's SFT pairs) -> conversations (``lumi.data.readers``) -> filters, every drop counted by reason (malformed
records, empty turns, no assistant turn, roles out of order, language, exact and MinHash near-duplicate prompts
across all sources, too long after templating) -> at most ``max_conversations`` kept (a seeded sample) -> a seeded
train/val split by conversation (the synthetic world's split is its own: train facts to train, validation facts asked
with validation wordings to val) -> token ids and assistant-only loss mask (``lumi.data.chat``) -> rows of
``seq_len`` tokens packed best-fit-decreasing, several conversations per row, padded with PAD (never a target).

Output directory (written staged, replaced only when complete):
``{train,val}.jsonl`` (the conversations as message lists), ``{train,val}_tokens.npy`` / ``{train,val}_mask.npy``
(rows x seq_len), ``tokenizer/`` (the chat tokenizer: ``apply_chat_template`` reproduces the training tokens),
``manifest.json`` and ``DATA_CARD.md``.
"""

from __future__ import annotations

import hashlib
import io
import logging
import random
import time
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Literal

import numpy as np
from pydantic import Field, model_validator

from lumi.core.config import ConfigModel, config_to_dict
from lumi.corpus.config import NearDedupConfig, WorldSettings
from lumi.corpus.minhash import MinHasher, near_duplicate_of
from lumi.data.chat import (END_OF_TURN_ID, EncodedConversation, TEMPLATES, chat_tokenizer, check_messages,
                            cut_at_turn, encode_within, get_template, longest_piece_chars, save_chat_tokenizer,
                            verify_chat_tokenizer)
from lumi.data.readers import FORMATS, READERS, Conversation, ReadStats, detect
from lumi.core.errors import LumiError
from lumi.core.files import (atomic_write_bytes, atomic_write_json, atomic_write_jsonl, atomic_write_text,
                        read_json, read_manifest_file, sha256_file, staged_output_dir)
from lumi.formats.finetune_data import array_records, read_sft_split
from lumi.formats.lineage import WORLDS_KEY, worlds_in_config
from lumi.formats.model_dir import tokenizer_identity  # the one identity, recorded as tokenizer_sha256
from lumi.formats.records import BadRecord, read_records
from lumi.core.special_tokens import PAD_ID

log = logging.getLogger(__name__)

SFT_FORMAT = "lumi-sft/1"
MANIFEST = "manifest.json"
TOKENIZER_SUBDIR = "tokenizer"
SPLITS = ("train", "val")


class HubSource(ConfigModel):
    """Records from ``datasets.load_dataset(dataset, subset, split=..., data_files=...)``: a hub id, or a local
    builder (``json``, ``parquet``) with ``data_files``."""

    type: Literal["hub"] = Field("hub", description="records loaded with datasets.load_dataset")
    name: str = Field(description="the source's name in the manifest")
    dataset: str = Field(description="hub id (tatsu-lab/alpaca ...) or a datasets builder (json, parquet)")
    subset: str | None = Field(None, description="dataset configuration name")
    split: str = Field("train", description="dataset split")
    revision: str | None = Field(None, description="hub revision (commit, tag, branch)")
    data_files: list[str] | None = Field(None, description="files for a local builder")
    format: Literal["auto", *FORMATS] = Field("auto", description="record format; auto: detected from the records")
    max_conversations: int | None = Field(None, ge=1, description="keep at most this many (a seeded sample)")


class FileSource(ConfigModel):
    """Records from local JSON (an array) or JSON-lines files, optionally gzipped, read as they are (wrong types stay
    wrong, so they are counted rather than coerced); each file is read by its own reader (format detected per file
    unless ``format`` is set)."""

    type: Literal["files"] = Field(description="local JSON / JSONL files, optionally .gz")
    name: str = Field(description="the source's name in the manifest")
    paths: list[str] = Field(min_length=1, description="files to read (.json, .jsonl, either .gz)")
    format: Literal["auto", *FORMATS] = Field("auto", description="record format; auto: detected per file from its "
                                                                   "records")
    max_conversations: int | None = Field(None, ge=1, description="keep at most this many (a seeded sample)")


class SyntheticPairsSource(ConfigModel):
    """The synthetic world's SFT pairs: its train facts to the train split, its validation facts (asked with the
    validation wordings) to the val split, whatever ``val_fraction`` says -- so the val loss, and early stopping on it,
    measure unseen facts and wordings. Held-out facts stay out: stage 80 asks about them."""

    type: Literal["synthetic"] = Field(description="the synthetic world's question/answer pairs")
    name: str = Field("world", description="the source's name in the manifest")
    world: WorldSettings = Field(description="{\"from\": corpus config} (its synthetic source: the world the "
                                             "base model was pretrained on), or the world's settings")
    max_conversations: int | None = Field(None, ge=1, description="keep at most this many (a seeded sample)")


Source = HubSource | FileSource | SyntheticPairsSource


class DedupConfig(ConfigModel):
    """Duplicate prompts (the first user turn) across all sources; the first one read is kept."""

    exact: bool = Field(True, description="drop exact duplicate prompts (after whitespace and case folding)")
    near: NearDedupConfig = Field(default_factory=lambda: NearDedupConfig(enabled=True),
                                  description="MinHash near-duplicate prompts (the corpus stage's implementation)")


class SFTCorpusConfig(ConfigModel):
    """Stage 60 (``config/sft/datasets/*.json``)."""

    sources: list[Source] = Field(min_length=1, description="datasets to read, in priority order for dedup")
    template: str = Field("chatml", description=f"chat template: one of {', '.join(TEMPLATES)}")
    system_prompt: str | None = Field(None, description="system message for conversations without one")
    seq_len: int = Field(512, ge=16, description="row length in tokens; longer conversations are dropped or cut")
    overlong: Literal["drop", "cut_at_turn"] = Field(
        "drop", description="a conversation longer than seq_len: drop it, or keep its longest prefix ending at an "
                            "assistant turn")
    languages: list[str] | None = Field(["en"], description="keep these languages (null: all); from the record's "
                                                             "lang field, else detected when detect_language")
    detect_language: bool = Field(False, description="detect the language of records that do not state it "
                                                     "(fastText lid.176, as the corpus stage)")
    dedup: DedupConfig = Field(default_factory=DedupConfig, description="duplicate prompt removal")
    val_fraction: float = Field(0.05, ge=0, lt=1, description=(
        "share of conversations in the val split; a synthetic source's val split is its world's validation facts"))
    seed: int = Field(0, ge=0, description="seed of the split and of max_conversations sampling")

    @model_validator(mode="after")
    def _known_template(self) -> "SFTCorpusConfig":
        if self.template not in TEMPLATES:
            raise ValueError(f"unknown chat template {self.template!r}; expected one of {', '.join(TEMPLATES)}")
        return self


# --- reading

def load_hub_records(source: HubSource) -> Iterable[dict]:
    """The records of a datasets source; hub and file errors become one line naming the dataset."""
    import datasets

    what = f"source '{source.name}': dataset '{source.dataset}'"
    try:
        return datasets.load_dataset(source.dataset, source.subset, split=source.split, revision=source.revision,
                                     data_files=source.data_files)
    except ConnectionError as exc:
        raise LumiError(f"{what} cannot be reached on the Hugging Face hub ({exc.__class__.__name__}); check the "
                        "network and HF_HUB_OFFLINE") from None
    except (FileNotFoundError, ValueError) as exc:
        raise LumiError(f"{what}: {str(exc).splitlines()[0]}") from None


@dataclass
class RecordKind:
    """What the SFT (or DPO) stage reads: its readers by format, how a record's format is detected, what a file of
    it is called in errors, and the synthetic world's records and format."""

    readers: dict[str, Callable[[Iterable[Any], ReadStats], Iterator[Any]]]
    detect: Callable[[Any], str | None]
    item: str                                  # "conversation", "preference pair"
    file_what: str                             # "SFT data file"
    synthetic_records: Callable[[Any, str], Iterable[Any]]  # (source, world split) -> records
    synthetic_format: str


# The synthetic world's parts: its train facts go to the train split, its validation facts to val, as they are.
SYNTHETIC_SPLITS = (("train", "train"), ("validation", "val"))


def source_parts(source: Source, kind: RecordKind) -> list[tuple[str, Callable[[], Iterable[Any]], str | None]]:
    """(label, records loader, fixed split) per part a source is read in: each local file alone (its own format)
    and a hub dataset whole, split later by the seeded hash (None); the synthetic world as its train and validation
    facts, each to its own split."""
    if isinstance(source, FileSource):
        return [(path, lambda path=path: read_records(path, kind.file_what), None) for path in source.paths]
    if isinstance(source, HubSource):
        return [(f"source '{source.name}' (dataset {source.dataset})", lambda: load_hub_records(source), None)]
    return [(f"source '{source.name}' ({world_split} facts)",
             lambda world_split=world_split: kind.synthetic_records(source, world_split), split)
            for world_split, split in SYNTHETIC_SPLITS]


def part_format(source: Source, label: str, records: list[Any], kind: RecordKind) -> str:
    """The source's stated format, else the one detected from the part's first object."""
    if isinstance(source, SyntheticPairsSource):
        return kind.synthetic_format
    if source.format != "auto":
        return source.format
    first = next((r for r in records if isinstance(r, dict)), None)
    fmt = kind.detect(first) if first is not None else None
    if fmt is None:
        fields = ", ".join(sorted(map(str, first))) if first else "no JSON objects"
        raise LumiError(f"{label}: cannot tell the {kind.item} format (fields: {fields}); pass --format / set the "
                        f"source's format to one of {', '.join(kind.readers)}")
    return fmt


def read_source(source: Source, kind: RecordKind, stats: ReadStats,
                formats: dict[str, str]) -> Iterator[tuple[str | None, Any]]:
    """(fixed split or None, item) for the items of every part of ``source``, each part read by its own (detected)
    reader, its format recorded in ``formats``; lines that are not JSON are counted (``invalid_json``, with
    file:line and cause). A part that yields nothing fails the stage in one line naming it and the format tried. A
    fixed split prefixes the item's id, which is unique within its part only."""
    for label, load, fixed_split in source_parts(source, kind):
        records = []
        for record in load():
            if isinstance(record, BadRecord):
                stats.read += 1
                stats.drop("invalid_json", f"{record.where}: {record.cause}")
            else:
                records.append(record)
        fmt = part_format(source, label, records, kind)
        formats[label] = fmt
        before, yielded = Counter(stats.dropped), 0
        for item in kind.readers[fmt](records, stats):
            yielded += 1
            yield fixed_split, (replace(item, id=f"{fixed_split}/{item.id}") if fixed_split else item)
        if not yielded:
            dropped = dict(stats.dropped - before) or "nothing read"
            raise LumiError(f"{label}: no {kind.item} read as format '{fmt}' (dropped: {dropped}); pass --format / "
                            f"set the source's format to one of {', '.join(kind.readers)}")


def input_sources(paths: list[Path], fmt: str) -> list[dict]:
    """``--input`` files as sources, one per file named after it: each is read by its own reader and counted on its
    own line of the data card."""
    names = [Path(p).name for p in paths]
    return [{"type": "files", "name": name if names.count(name) == 1 else f"{name}#{index}", "paths": [str(path)],
             "format": fmt} for index, (name, path) in enumerate(zip(names, paths))]


def checkpoint_context(tokenizer_dir: Path) -> int | None:
    """The context length of the model whose dir ``--tokenizer-dir`` names (its ``config.json``, or for a LoRA
    adapter dir its base's), None for a stage-20 tokenizer dir."""
    config = Path(tokenizer_dir) / "config.json"
    adapter = Path(tokenizer_dir) / "adapter_config.json"
    if not config.is_file() and adapter.is_file():
        base = read_json(adapter, "adapter config").get("base_model_name_or_path")
        config = Path(base) / "config.json" if isinstance(base, str) else config
    if not config.is_file():
        return None
    context = read_json(config, "model config").get("max_position_embeddings")
    return int(context) if isinstance(context, int) else None


def fitting_seq_len(tokenizer_dir: Path, default: int) -> int | None:
    """For config-free runs on a checkpoint: its context when the default row length would not fit it (micro's 256
    tokens), else None (keep the default)."""
    context = checkpoint_context(tokenizer_dir)
    if context is not None and context < default:
        log.info("seq_len %d: the context of %s (the default %d would not fit it)", context, tokenizer_dir, default)
        return context
    return None


def too_long_note(name: str, source: dict, seq_len: int, fixes: str) -> str | None:
    """The line that says what share of a source was dropped for length, and what to change; None when none was."""
    dropped = source["dropped"].get("too_long", 0)
    if not dropped:
        return None
    return (f"{name}: {dropped} of {source['read']} ({dropped / max(source['read'], 1):.0%}) dropped as longer than "
            f"seq_len {seq_len} tokens; to keep more: {fixes}")


SFT_LENGTH_FIXES = ("raise --seq-len (up to the model's context), --set overlong=cut_at_turn (keep each "
                    "conversation's longest prefix ending with an assistant turn), or train a model with a longer "
                    "context")


SFT_RECORDS = RecordKind(READERS, detect, "conversation", "SFT data file",
                         lambda source, split: source.world.world().sft_pairs(split), "pairs")


# --- filters

def _prompt_key(conversation: Conversation) -> str:
    first_user = next(m["content"] for m in conversation.messages if m["role"] == "user")
    return " ".join(first_user.lower().split())


@dataclass
class Candidate:
    source: str
    conversation: Conversation
    encoded: EncodedConversation
    split: str | None = None  # fixed by the source (the synthetic world's); None: the seeded hash split


class LanguageFilter:
    def __init__(self, languages: list[str] | None, detect_language: bool):
        self.languages = set(languages) if languages is not None else None
        self.identifier = None
        if self.languages is not None and detect_language:
            from lumi.corpus.filters import LanguageIdentifier
            self.identifier = LanguageIdentifier()

    def keeps(self, conversation: Conversation) -> bool:
        if self.languages is None:
            return True
        lang = conversation.lang
        if lang is None and self.identifier is not None:
            lang = self.identifier.top(" ".join(m["content"] for m in conversation.messages[:2])[:2000])[0]
        return lang is None or lang in self.languages


def seeded_sample(items: list, limit: int | None, seed: int, name: str) -> list:
    if limit is None or len(items) <= limit:
        return items
    chosen = sorted(random.Random(f"lumi-sft/{seed}/{name}").sample(range(len(items)), limit))
    return [items[i] for i in chosen]


def collect(config: SFTCorpusConfig, tokenizer: Any) -> tuple[list[Candidate], dict[str, dict]]:
    """Read every source and apply the filters; returns the kept candidates and per-source statistics."""
    template = get_template(config.template, config.system_prompt)
    longest_piece = longest_piece_chars(tokenizer)
    languages = LanguageFilter(config.languages, config.detect_language)
    stats: dict[str, dict] = {}
    seen_prompts: set[str] = set()
    kept: list[Candidate] = []
    per_source: dict[str, list[Candidate]] = {}
    for source in config.sources:
        if source.name in stats:
            raise LumiError(f"two sources are named {source.name!r}; give each its own name")
        read_stats, formats = ReadStats(), {}
        candidates = []
        cut_conversations = 0
        for fixed_split, conversation in read_source(source, SFT_RECORDS, read_stats, formats):
            problem = check_messages(conversation.messages)
            if problem:
                read_stats.drop(problem, f"{conversation.id}")
                continue
            if not languages.keeps(conversation):
                read_stats.drop("language", f"{conversation.id}: lang {conversation.lang}")
                continue
            key = _prompt_key(conversation)
            if config.dedup.exact:
                if key in seen_prompts:
                    read_stats.drop("duplicate_prompt", conversation.id)
                    continue
                seen_prompts.add(key)
            encoded, whole = encode_within(tokenizer, conversation.messages, template, config.seq_len, longest_piece)
            if not whole or len(encoded.input_ids) > config.seq_len:
                cut = cut_at_turn(encoded, config.seq_len) if encoded and config.overlong == "cut_at_turn" else None
                if cut is None:
                    size = f"{len(encoded.input_ids)} tokens" if whole else \
                        f"over {config.seq_len * longest_piece:,} characters"
                    read_stats.drop("too_long", f"{conversation.id}: {size} > seq_len {config.seq_len}")
                    continue
                cut_conversations += 1
                encoded = cut
            candidates.append(Candidate(source.name, conversation, encoded, fixed_split))
        per_source[source.name] = candidates
        stats[source.name] = {"formats": formats, "read": read_stats, "cut_at_turn": cut_conversations}
    if config.dedup.near.enabled:
        _drop_near_duplicates(per_source, stats, config.dedup.near)
    for source in config.sources:
        sampled = seeded_sample(per_source[source.name], source.max_conversations, config.seed, source.name)
        stats[source.name]["over_max_conversations"] = len(per_source[source.name]) - len(sampled)
        kept += sampled
    return kept, stats


def _drop_near_duplicates(per_source: dict[str, list[Candidate]], stats: dict[str, dict],
                          config: NearDedupConfig) -> None:
    flat = [(name, c) for name, candidates in per_source.items() for c in candidates]
    if len(flat) < 2:
        return
    hasher = MinHasher(config)
    signatures = np.stack([hasher.signature(_prompt_key(c.conversation)) for _, c in flat])
    roots = near_duplicate_of(signatures, np.arange(len(flat)), config)
    duplicate = {i for i, root in enumerate(roots) if root != i}
    for name in per_source:
        per_source[name] = []
    for index, (name, candidate) in enumerate(flat):
        if index in duplicate:
            stats[name]["read"].drop("near_duplicate_prompt", candidate.conversation.id)
        else:
            per_source[name].append(candidate)


# --- split and pack

def split_of_key(key: str, val_fraction: float, seed: int) -> str:
    """A keyed hash of a record's ``source/id``: independent of order, the same on every machine (SFT and DPO)."""
    digest = hashlib.blake2b(key.encode(), digest_size=8, key=seed.to_bytes(8, "little")).digest()
    return "val" if int.from_bytes(digest, "little") / 2**64 < val_fraction else "train"


def split_of(candidate: Candidate, val_fraction: float, seed: int) -> str:
    return split_of_key(f"{candidate.source}/{candidate.conversation.id}", val_fraction, seed)


def pack_best_fit(lengths: list[int], seq_len: int) -> list[list[int]]:
    """Indices per row: longest first, each into the fullest row it still fits (best-fit decreasing, TRL's
    "bfd"); deterministic (ties broken by index)."""
    rows: list[list[int]] = []
    room: list[int] = []
    for index in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        fits = [r for r in range(len(rows)) if room[r] >= lengths[index]]
        if fits:
            best = min(fits, key=lambda r: (room[r], r))
            rows[best].append(index)
            room[best] -= lengths[index]
        else:
            rows.append([index])
            room.append(seq_len - lengths[index])
    return rows


def pack_rows(encoded: list[EncodedConversation], seq_len: int) -> tuple[np.ndarray, np.ndarray]:
    """(rows, seq_len) token ids and loss mask; row tails are PAD with mask 0."""
    layout = pack_best_fit([len(e.input_ids) for e in encoded], seq_len)
    tokens = np.full((len(layout), seq_len), PAD_ID, dtype=np.int32)
    mask = np.zeros((len(layout), seq_len), dtype=np.uint8)
    for row, members in enumerate(layout):
        offset = 0
        for index in members:
            ids = encoded[index].input_ids
            tokens[row, offset:offset + len(ids)] = ids
            mask[row, offset:offset + len(ids)] = encoded[index].loss_mask
            offset += len(ids)
    return tokens, mask


def npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def load_split(directory: str | Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """The packed (tokens, loss mask) of a split of an SFT data dir, verified (``lumi.formats.finetune_data``)."""
    return read_sft_split(directory, split, need_targets=False)


def read_sft_manifest(directory: str | Path) -> dict:
    return read_manifest_file(directory, MANIFEST, SFT_FORMAT, "SFT data")


# --- the stage

def build_sft_corpus(config: SFTCorpusConfig, tokenizer_dir: Path, output_dir: Path, force: bool = False) -> dict:
    started = time.monotonic()
    template = get_template(config.template, config.system_prompt)
    tokenizer = chat_tokenizer(tokenizer_dir, template)
    candidates, stats = collect(config, tokenizer)
    if not candidates:
        dropped = Counter()
        for entry in stats.values():
            dropped.update(entry["read"].dropped)
        raise LumiError(f"no conversation left after filtering (dropped: {dict(dropped) or 'nothing read'}); "
                        "check the input format, languages and seq_len")
    by_split = {split: [c for c in candidates if (c.split or split_of(c, config.val_fraction, config.seed)) == split]
                for split in SPLITS}
    if not by_split["train"]:
        raise LumiError(f"all {len(candidates)} conversations went to val; lower val_fraction")
    with staged_output_dir(output_dir, force) as staging:
        save_chat_tokenizer(tokenizer, template, staging / TOKENIZER_SUBDIR, tokenizer_dir)
        verify_chat_tokenizer(staging / TOKENIZER_SUBDIR, template)
        splits = {}
        for split, members in by_split.items():
            atomic_write_jsonl(staging / f"{split}.jsonl", [
                {"id": c.conversation.id, "source": c.source, "messages": c.conversation.messages} for c in members])
            tokens, mask = pack_rows([c.encoded for c in members], config.seq_len)
            atomic_write_bytes(staging / f"{split}_tokens.npy", npy_bytes(tokens))
            atomic_write_bytes(staging / f"{split}_mask.npy", npy_bytes(mask))
            splits[split] = {"conversations": len(members), "rows": int(tokens.shape[0]),
                             "tokens": int(sum(len(c.encoded.input_ids) for c in members)),
                             "target_tokens": int(mask.sum()),
                             "fill": float((tokens != PAD_ID).mean()) if tokens.size else 0.0}
        seconds = time.monotonic() - started
        sources = {}
        for name, entry in stats.items():
            read: ReadStats = entry["read"]
            kept = sum(1 for c in candidates if c.source == name)
            sources[name] = {"format": ", ".join(sorted(set(entry["formats"].values()))), "formats": entry["formats"],
                             "read": read.read, "kept": kept,
                             "dropped": dict(sorted(read.dropped.items())),
                             "dropped_examples": read.examples, "cut_at_turn": entry["cut_at_turn"],
                             "over_max_conversations": entry["over_max_conversations"]}
        manifest = {
            "format": SFT_FORMAT, "template": template.name, "system_prompt": template.default_system,
            "seq_len": config.seq_len, "end_of_turn_id": END_OF_TURN_ID,
            "tokenizer_sha256": tokenizer_identity(tokenizer_dir),
            "chat_tokenizer_sha256": {name: sha256_file(staging / TOKENIZER_SUBDIR / name)
                                      for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja")},
            "files": array_records(staging, [f"{split}_{kind}.npy" for split in SPLITS for kind in ("tokens", "mask")]),
            "sources": sources, "splits": splits,
            "boundary_merges": int(sum(c.encoded.boundary_merges for c in candidates)),
            "seconds": round(seconds, 3),
            "conversations_per_second": round(sum(s["read"] for s in sources.values()) / max(seconds, 1e-9), 1),
            "config": config_to_dict(config),
            WORLDS_KEY: sorted(worlds_in_config(config_to_dict(config))),
        }
        atomic_write_text(staging / "DATA_CARD.md", data_card(manifest))
        atomic_write_json(staging / MANIFEST, manifest)
    return manifest


def data_card(manifest: dict) -> str:
    lines = ["# SFT data card", "",
             f"Template `{manifest['template']}`"
             + (f" with system prompt {manifest['system_prompt']!r}" if manifest["system_prompt"] else "")
             + f"; rows of {manifest['seq_len']} tokens; tokenizer sha256 `{manifest['tokenizer_sha256'][:16]}…`.",
             "Loss mask: the assistant turns' content and their `<|im_end|>` only.", "",
             "| source | format | read | kept | dropped (by reason) | cut at a turn |", "|---|---|---|---|---|---|"]
    for name, source in manifest["sources"].items():
        reasons = ", ".join(f"{k} {v}" for k, v in source["dropped"].items()) or "none"
        lines.append(f"| {name} | {source['format']} | {source['read']} | {source['kept']} | {reasons} | "
                     f"{source['cut_at_turn']} |")
    notes = [too_long_note(name, source, manifest["seq_len"], SFT_LENGTH_FIXES)
             for name, source in manifest["sources"].items()]
    lines += [""] + [f"- {note}" for note in notes if note] if any(notes) else []
    lines += ["", "| split | conversations | rows | tokens | target tokens | fill |", "|---|---|---|---|---|---|"]
    for split, entry in manifest["splits"].items():
        lines.append(f"| {split} | {entry['conversations']} | {entry['rows']} | {entry['tokens']} | "
                     f"{entry['target_tokens']} | {entry['fill']:.3f} |")
    return "\n".join(lines) + "\n"
