"""Stage 85: preference datasets -> filtered, split, tokenized chosen/rejected pairs with their answer masks.

Per source: records (a hub dataset through ``datasets.load_dataset``, local JSON/JSONL files, or the synthetic
world's preference pairs; the loading is stage 60's, ``lumi.data.sft_corpus``) -> pairs (``PREFERENCE_READERS``:
a prompt as messages and two answers) -> filters, every drop counted by reason (malformed records, HH transcripts
with no shared prefix, empty or identical answers, duplicates, too long) -> a seeded split by prompt -> for each answer
the token ids of ``prompt + answer`` through the SFT chat template (``lumi.data.chat``) and a mask that marks only the
final answer's tokens (its content and ``<|im_end|>``; earlier assistant turns of a multi-turn prompt are context).

Length policy (``overlong``): a pair whose longer side exceeds ``seq_len`` has its prompt cut from the left at a
turn boundary (whole user/assistant exchanges after the system message dropped, oldest first) until it fits; the
answers are never cut; if even the last user turn with the answer does not fit the pair is dropped (``too_long``).

Output directory (written staged, replaced only when complete): ``{train,val}.jsonl`` (prompt, chosen, rejected as
text), ``{train,val}_pairs.npz`` (``chosen_ids``, ``chosen_mask``, ``rejected_ids``, ``rejected_mask``: pairs x
seq_len, PAD after each sequence), ``tokenizer/`` (the chat tokenizer), ``manifest.json`` and ``DATA_CARD.md``.
"""

from __future__ import annotations

import io
import logging
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Literal

import numpy as np
import torch
from pydantic import Field, model_validator

from lumi.core.config import ConfigModel, config_to_dict
from lumi.core.errors import LumiError
from lumi.core.files import (atomic_write_bytes, atomic_write_json, atomic_write_jsonl, atomic_write_text,
                             read_manifest_file, sha256_file, staged_output_dir)
from lumi.formats.finetune_data import PAIR_ARRAYS, array_records, read_pairs
from lumi.formats.lineage import WORLDS_KEY, worlds_in_config
from lumi.core.special_tokens import IM_START_ID, PAD_ID
from lumi.data.chat import (END_OF_TURN_ID, TEMPLATES, Template, chat_tokenizer, check_messages, encode_conversation,
                            get_template, longest_piece_chars, messages_that_can_fit, save_chat_tokenizer,
                            verify_chat_tokenizer)
from lumi.data.readers import (hh_rlhf, orca_dpo, preference_pairs, sharegpt_preference, stack_exchange,
                               ultrafeedback)
from lumi.data.readers.base import PreferencePair, ReadStats
from lumi.data.sft_corpus import (TOKENIZER_SUBDIR, FileSource, HubSource, RecordKind, SyntheticPairsSource,
                                  read_source, seeded_sample, split_of_key, tokenizer_identity, too_long_note)

log = logging.getLogger(__name__)

DPO_FORMAT = "lumi-dpo/1"
MANIFEST = "manifest.json"
SPLITS = ("train", "val")
ARRAYS = PAIR_ARRAYS
_DETECTION_ORDER = (ultrafeedback, sharegpt_preference, stack_exchange, orca_dpo, hh_rlhf, preference_pairs)
PREFERENCE_READERS = {module.NAME: module.read for module in _DETECTION_ORDER}
PREFERENCE_FORMATS = tuple(PREFERENCE_READERS)


def detect_preference_format(record: object) -> str | None:
    """The preference format whose characteristic fields the record has (None when none fits)."""
    if isinstance(record, dict):
        for module in _DETECTION_ORDER:
            if module.looks_like(record):
                return module.NAME
    return None


class PreferenceHubSource(HubSource):
    format: Literal["auto", *PREFERENCE_FORMATS] = Field(
        "auto", description="record format; auto: detected from the records")


class PreferenceFileSource(FileSource):
    format: Literal["auto", *PREFERENCE_FORMATS] = Field(
        "auto", description="record format; auto: detected from the records")


class SyntheticPreferenceSource(SyntheticPairsSource):
    """The synthetic world's preference pairs: chosen states the fact, rejected a wrong object, another fact of the
    subject, a refusal or the bare name (``lumi.data.synthetic.REJECTED_KINDS``); train facts to train, validation
    facts (validation wordings) to val, held-out facts nowhere."""


PreferenceSource = PreferenceHubSource | PreferenceFileSource | SyntheticPreferenceSource


class PreferenceCorpusConfig(ConfigModel):
    """Stage 85 (``config/dpo/datasets/*.json``)."""

    sources: list[PreferenceSource] = Field(min_length=1, description="datasets to read, in priority order for dedup")
    template: str = Field("chatml", description=f"chat template (the SFT model's): one of {', '.join(TEMPLATES)}")
    system_prompt: str | None = Field(None, description="system message for prompts without one")
    seq_len: int = Field(512, ge=16, description="longest prompt + answer in tokens")
    overlong: Literal["cut_prompt", "drop"] = Field(
        "cut_prompt", description="a pair longer than seq_len: cut its prompt from the left at a turn boundary "
                                  "(answers kept; dropped when even the last user turn does not fit), or drop it")
    dedup: Literal["pair", "prompt", "off"] = Field(
        "pair", description="drop repeated pairs (same prompt and answers), repeated prompts, or nothing "
                            "(after whitespace and case folding; the first one read is kept)")
    val_fraction: float = Field(0.05, ge=0, lt=1, description=(
        "share of pairs in the val split; a synthetic source's val split is its world's validation facts"))
    seed: int = Field(0, ge=0, description="seed of the split and of max_conversations sampling")

    @model_validator(mode="after")
    def _known_template(self) -> "PreferenceCorpusConfig":
        if self.template not in TEMPLATES:
            raise ValueError(f"unknown chat template {self.template!r}; expected one of {', '.join(TEMPLATES)}")
        return self


# --- reading

DPO_LENGTH_FIXES = ("raise --seq-len (up to the model's context; prompts are already cut at turns, answers never are), "
                    "or train a model with a longer context")

PREFERENCE_RECORDS = RecordKind(PREFERENCE_READERS, detect_preference_format, "preference pair", "DPO data file",
                                lambda source, split: source.world.world().preference_pairs(split),
                                preference_pairs.NAME)


# --- tokenization and the length policy

@dataclass
class EncodedAnswer:
    input_ids: list[int]
    answer_mask: list[int]  # 1 on the final answer's tokens (content and <|im_end|>)


def encode_answer(tokenizer: Any, prompt: list[dict], answer: str, template: Template) -> EncodedAnswer:
    """``prompt + answer`` through the chat template; only the final assistant turn is marked (the tokens after
    the last ``<|im_start|>``, as far as the SFT loss mask covers them)."""
    encoded = encode_conversation(tokenizer, [*prompt, {"role": "assistant", "content": answer}], template)
    last_turn = len(encoded.input_ids) - 1 - encoded.input_ids[::-1].index(IM_START_ID)
    return EncodedAnswer(encoded.input_ids, [m if i > last_turn else 0 for i, m in enumerate(encoded.loss_mask)])


def shorter_prompts(prompt: list[dict]) -> Iterable[list[dict]]:
    """The prompt, then with its oldest user/assistant exchanges dropped one by one (the system message kept)."""
    system = prompt[:1] if prompt and prompt[0]["role"] == "system" else []
    turns = prompt[len(system):]
    for start in range(0, len(turns), 2):
        yield system + turns[start:]


def fit_pair(tokenizer: Any, pair: PreferencePair, template: Template, seq_len: int, overlong: str,
             longest_piece: int) -> tuple[list[dict], EncodedAnswer, EncodedAnswer] | None:
    """The (possibly cut) prompt and the two encoded answers that fit ``seq_len``, None when none does. A prompt and
    answer whose text alone is more than ``seq_len`` tokens can hold are not tokenized (``messages_that_can_fit``):
    a megabyte answer would otherwise cost gigabytes to find too long."""
    for prompt in shorter_prompts(pair.prompt):
        may_fit = all(messages_that_can_fit([*prompt, {"role": "assistant", "content": answer}], seq_len,
                                            longest_piece) == len(prompt) + 1 for answer in (pair.chosen, pair.rejected))
        if may_fit:
            chosen = encode_answer(tokenizer, prompt, pair.chosen, template)
            rejected = encode_answer(tokenizer, prompt, pair.rejected, template)
            if max(len(chosen.input_ids), len(rejected.input_ids)) <= seq_len:
                return prompt, chosen, rejected
        if overlong == "drop":
            return None
    return None


def pair_problem(pair: PreferencePair) -> str | None:
    """Why a pair cannot be trained on (None when it can)."""
    if not pair.chosen.strip() or not pair.rejected.strip():
        return "empty_answer"
    if " ".join(pair.chosen.split()) == " ".join(pair.rejected.split()):
        return "identical_answers"
    problem = check_messages([*pair.prompt, {"role": "assistant", "content": pair.chosen}])
    if problem is None and (not pair.prompt or pair.prompt[-1]["role"] != "user"):
        return "prompt_not_ending_with_user"
    return problem


def _fold(text: str) -> str:
    return " ".join(text.lower().split())


def dedup_key(pair: PreferencePair, mode: str) -> str | None:
    prompt = "\n".join(f"{m['role']}: {_fold(m['content'])}" for m in pair.prompt)
    return None if mode == "off" else prompt if mode == "prompt" else \
        f"{prompt}\n>{_fold(pair.chosen)}\n<{_fold(pair.rejected)}"


@dataclass
class Candidate:
    source: str
    pair: PreferencePair
    chosen: EncodedAnswer
    rejected: EncodedAnswer
    prompt_cut: bool
    split: str | None = None  # fixed by the source (the synthetic world's); None: the seeded hash split


def collect(config: PreferenceCorpusConfig, tokenizer: Any) -> tuple[list[Candidate], dict[str, dict]]:
    """Read every source and apply the filters; the kept candidates and per-source statistics."""
    template = get_template(config.template, config.system_prompt)
    longest_piece = longest_piece_chars(tokenizer)
    stats: dict[str, dict] = {}
    seen: set[str] = set()
    kept: list[Candidate] = []
    for source in config.sources:
        if source.name in stats:
            raise LumiError(f"two sources are named {source.name!r}; give each its own name")
        read_stats, formats = ReadStats(), {}
        candidates = []
        for fixed_split, pair in read_source(source, PREFERENCE_RECORDS, read_stats, formats):
            problem = pair_problem(pair)
            if problem:
                read_stats.drop(problem, pair.id)
                continue
            key = dedup_key(pair, config.dedup)
            if key is not None:
                if key in seen:
                    read_stats.drop("duplicate", pair.id)
                    continue
                seen.add(key)
            fitted = fit_pair(tokenizer, pair, template, config.seq_len, config.overlong, longest_piece)
            if fitted is None:
                read_stats.drop("too_long", f"{pair.id}: prompt + answer > seq_len {config.seq_len} tokens")
                continue
            prompt, chosen, rejected = fitted
            candidates.append(Candidate(source.name, PreferencePair(prompt, pair.chosen, pair.rejected, pair.id),
                                        chosen, rejected, prompt_cut=len(prompt) < len(pair.prompt),
                                        split=fixed_split))
        sampled = seeded_sample(candidates, source.max_conversations, config.seed, source.name)
        stats[source.name] = {"formats": formats, "read": read_stats, "over_max_conversations":
                              len(candidates) - len(sampled)}
        kept += sampled
    return kept, stats


def pair_arrays(candidates: list[Candidate], seq_len: int) -> dict[str, np.ndarray]:
    """Pairs x seq_len ids (PAD after each sequence) and answer masks."""
    arrays = {name: np.full((len(candidates), seq_len), PAD_ID, dtype=np.int32) if name.endswith("ids")
              else np.zeros((len(candidates), seq_len), dtype=np.uint8) for name in ARRAYS}
    for row, candidate in enumerate(candidates):
        for side in ("chosen", "rejected"):
            encoded: EncodedAnswer = getattr(candidate, side)
            arrays[f"{side}_ids"][row, :len(encoded.input_ids)] = encoded.input_ids
            arrays[f"{side}_mask"][row, :len(encoded.answer_mask)] = encoded.answer_mask
    return arrays


def load_pairs(directory: str | Path, split: str) -> dict[str, np.ndarray]:
    """The tokenized pairs of a split of a DPO data dir, verified (``lumi.formats.finetune_data``)."""
    return read_pairs(directory, split)


def pairs_batch(arrays: dict[str, np.ndarray], rows: list[int] | range,
                reference: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """The pairs ``rows`` as tensors, cut to the batch's longest sequence (the rest is PAD)."""
    index = np.asarray(list(rows), dtype=np.int64)
    width = max(1, int(max((arrays[f"{side}_ids"][index] != PAD_ID).sum(axis=1).max() for side in
                           ("chosen", "rejected"))))
    batch = {name: torch.from_numpy(arrays[name][index, :width].astype(np.int64)) for name in ARRAYS}
    if reference is not None:
        batch.update({name: values[torch.from_numpy(index)] for name, values in reference.items()})
    return batch


def read_dpo_manifest(directory: str | Path) -> dict:
    return read_manifest_file(directory, MANIFEST, DPO_FORMAT, "DPO data")


# --- the stage

def build_preference_corpus(config: PreferenceCorpusConfig, tokenizer_dir: Path, output_dir: Path,
                            force: bool = False) -> dict:
    started = time.monotonic()
    template = get_template(config.template, config.system_prompt)
    tokenizer = chat_tokenizer(tokenizer_dir, template)
    candidates, stats = collect(config, tokenizer)
    if not candidates:
        dropped = Counter()
        for entry in stats.values():
            dropped.update(entry["read"].dropped)
        raise LumiError(f"no preference pair left after filtering (dropped: {dict(dropped) or 'nothing read'}); "
                        "check the input format and seq_len")
    # Split by prompt, not by record: every pair of one prompt lands in the same split (no val prompt seen in
    # training), and the split does not depend on record order.
    def split_of(c: Candidate) -> str:
        return c.split or split_of_key(f"{c.source}/{dedup_key(c.pair, 'prompt')}", config.val_fraction, config.seed)

    by_split = {split: [c for c in candidates if split_of(c) == split] for split in SPLITS}
    if not by_split["train"]:
        raise LumiError(f"all {len(candidates)} pairs went to val; lower val_fraction")
    with staged_output_dir(output_dir, force) as staging:
        save_chat_tokenizer(tokenizer, template, staging / TOKENIZER_SUBDIR, tokenizer_dir)
        verify_chat_tokenizer(staging / TOKENIZER_SUBDIR, template)
        splits = {}
        for split, members in by_split.items():
            atomic_write_jsonl(staging / f"{split}.jsonl", [
                {"id": c.pair.id, "source": c.source, "prompt": c.pair.prompt, "chosen": c.pair.chosen,
                 "rejected": c.pair.rejected} for c in members])
            buffer = io.BytesIO()
            np.savez(buffer, **pair_arrays(members, config.seq_len))
            atomic_write_bytes(staging / f"{split}_pairs.npz", buffer.getvalue())
            splits[split] = {"pairs": len(members),
                             "chosen_answer_tokens": int(sum(sum(c.chosen.answer_mask) for c in members)),
                             "rejected_answer_tokens": int(sum(sum(c.rejected.answer_mask) for c in members)),
                             "longest": max((max(len(c.chosen.input_ids), len(c.rejected.input_ids))
                                             for c in members), default=0)}
        seconds = time.monotonic() - started
        sources = {}
        for name, entry in stats.items():
            read: ReadStats = entry["read"]
            members = [c for c in candidates if c.source == name]
            sources[name] = {"format": ", ".join(sorted(set(entry["formats"].values()))), "formats": entry["formats"],
                             "read": read.read, "kept": len(members),
                             "dropped": dict(sorted(read.dropped.items())), "dropped_examples": read.examples,
                             "prompt_cut": sum(c.prompt_cut for c in members),
                             "over_max_conversations": entry["over_max_conversations"]}
        manifest = {
            "format": DPO_FORMAT, "template": template.name, "system_prompt": template.default_system,
            "seq_len": config.seq_len, "end_of_turn_id": END_OF_TURN_ID,
            "tokenizer_sha256": tokenizer_identity(tokenizer_dir),
            "chat_tokenizer_sha256": {name: sha256_file(staging / TOKENIZER_SUBDIR / name)
                                      for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja")},
            "files": array_records(staging, [f"{split}_pairs.npz" for split in SPLITS]),
            "sources": sources, "splits": splits, "seconds": round(seconds, 3),
            "config": config_to_dict(config),
            WORLDS_KEY: sorted(worlds_in_config(config_to_dict(config))),
        }
        atomic_write_text(staging / "DATA_CARD.md", data_card(manifest))
        atomic_write_json(staging / MANIFEST, manifest)
    return manifest


def data_card(manifest: dict) -> str:
    lines = ["# DPO data card", "",
             f"Template `{manifest['template']}`"
             + (f" with system prompt {manifest['system_prompt']!r}" if manifest["system_prompt"] else "")
             + f"; prompt + answer at most {manifest['seq_len']} tokens "
               f"(length policy `{manifest['config']['overlong']}`); tokenizer sha256 "
               f"`{manifest['tokenizer_sha256'][:16]}…`.",
             "Answer mask: the final assistant turn's content and its `<|im_end|>` only.", "",
             "| source | format | read | kept | dropped (by reason) | prompt cut |", "|---|---|---|---|---|---|"]
    for name, source in manifest["sources"].items():
        reasons = ", ".join(f"{k} {v}" for k, v in source["dropped"].items()) or "none"
        lines.append(f"| {name} | {source['format']} | {source['read']} | {source['kept']} | {reasons} | "
                     f"{source['prompt_cut']} |")
    notes = [too_long_note(name, source, manifest["seq_len"], DPO_LENGTH_FIXES)
             for name, source in manifest["sources"].items()]
    lines += [""] + [f"- {note}" for note in notes if note] if any(notes) else []
    lines += ["", "| split | pairs | chosen answer tokens | rejected answer tokens | longest |", "|---|---|---|---|---|"]
    for split, entry in manifest["splits"].items():
        lines.append(f"| {split} | {entry['pairs']} | {entry['chosen_answer_tokens']} | "
                     f"{entry['rejected_answer_tokens']} | {entry['longest']} |")
    return "\n".join(lines) + "\n"
