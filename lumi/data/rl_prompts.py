"""RL prompts (stage 97): questions with a reference answer a reward can check, from the synthetic world's *train*
facts or from GSM8K, split train/val by a seeded hash of their id.

The synthetic source asks train facts with train wordings only (``SyntheticWorld.sft_pairs("train")``: the questions
SFT and DPO train on); held-out facts and held-out wordings, which stage 95 asks, never become RL prompts (a test
checks it). Its reference is the fact's canonical statement, what stage 95's exact match compares with.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from lumi.core.config import ConfigModel
from lumi.core.errors import LumiError
from lumi.corpus.config import WorldSettings
from lumi.data.readers import gsm8k
from lumi.data.readers.base import ReadStats, RecordError
from lumi.data.sft_corpus import HubSource, load_hub_records, seeded_sample, split_of_key

SPLITS = ("train", "val")


class SyntheticQuestions(ConfigModel):
    """The synthetic world's train questions, each with its fact's canonical statement as the reference."""

    type: Literal["synthetic"] = Field(description="the synthetic world's train-fact questions")
    name: str = Field("world", description="the source's name in ids and logs")
    world: WorldSettings = Field(description="{\"from\": corpus config} (the world the model was trained "
                                             "on), or the world's settings")
    max_prompts: int | None = Field(None, ge=1, description="keep at most this many (a seeded sample)")


class GSM8KQuestions(ConfigModel):
    """GSM8K's records (``question``, ``answer`` ending ``#### N``) through ``datasets.load_dataset``."""

    type: Literal["gsm8k"] = Field(description="GSM8K-schema records: question, answer with a '#### N' final line")
    name: str = Field("gsm8k", description="the source's name in ids and logs")
    dataset: str = Field("openai/gsm8k", description="hub id, or a datasets builder (json) with data_files")
    subset: str | None = Field("main", description="dataset configuration name (main or socratic; null for json)")
    split: str = Field("train", description="dataset split (GSM8K's test split is for evaluation, not RL)")
    revision: str | None = Field(None, description="hub revision (commit, tag, branch)")
    data_files: list[str] | None = Field(None, description="files for a local builder")
    max_prompts: int | None = Field(None, ge=1, description="keep at most this many (a seeded sample)")


PromptSource = SyntheticQuestions | GSM8KQuestions


def synthetic_prompts(source: SyntheticQuestions) -> list[dict[str, str]]:
    return [{"id": f"{source.name}:{index}", "prompt": pair["prompt"], "reference": pair["response"]}
            for index, pair in enumerate(source.world.world().sft_pairs("train"))]


def gsm8k_prompts(source: GSM8KQuestions) -> tuple[list[dict[str, str]], ReadStats]:
    hub = HubSource(name=source.name, dataset=source.dataset, subset=source.subset, split=source.split,
                    revision=source.revision, data_files=source.data_files)
    stats, items = ReadStats(), []
    for index, record in enumerate(load_hub_records(hub)):
        stats.read += 1
        try:
            item = gsm8k.convert(record, index)
        except RecordError as error:
            stats.drop(error.reason, f"record {index}: {error}")
            continue
        items.append({**item, "id": f"{source.name}:{index}"})
    return items, stats


def load_prompts(sources: list[PromptSource], val_fraction: float, seed: int) -> dict[str, list[dict[str, str]]]:
    """``{"train": [...], "val": [...]}`` of ``{"id", "prompt", "reference"}``, in source order within a split."""
    splits: dict[str, list[dict[str, str]]] = {split: [] for split in SPLITS}
    for source in sources:
        if isinstance(source, SyntheticQuestions):
            items = synthetic_prompts(source)
        else:
            items, stats = gsm8k_prompts(source)
            if not items:
                reasons = ", ".join(f"{reason} {count}" for reason, count in stats.dropped.items())
                raise LumiError(f"source '{source.name}': no usable record of {stats.read} ({reasons or 'empty'})")
        for item in seeded_sample(items, source.max_prompts, seed, source.name):
            splits[split_of_key(item["id"], val_fraction, seed)].append(item)
    if not splits["train"]:
        raise LumiError("the RL prompt sources give no train prompts")
    return splits
