"""The evaluation config (``config/evaluation/*.json``): which measurements, on which data, with which limits.

Relative paths are read from the current directory (run from the repository root, as the scripts do).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from lumi.core.config import CONFIG_DIR, ConfigModel
from lumi.eval.tasks import TASKS
from lumi.eval.tasks.base import TaskSource
from lumi.corpus.config import WorldSettings

DEFAULT_PROMPTS = CONFIG_DIR / "evaluation" / "smoke_test_prompts.json"
# the shipped evaluation configs after pretraining (the default of `lumi evaluate`), SFT and DPO
PRETRAIN_CONFIG = CONFIG_DIR / "evaluation" / "pretrain.json"
SFT_CONFIG = CONFIG_DIR / "evaluation" / "sft.json"
DPO_CONFIG = CONFIG_DIR / "evaluation" / "dpo.json"


class PerplexityConfig(ConfigModel):
    """One text to score: exactly one of ``training_data``, ``packed_dir``, ``text_file`` or ``dataset``."""

    name: str = Field(min_length=1, description="label in the results and report")
    training_data: bool = Field(False, description="score packed_split of every packed dir the checkpoint was "
                                                   "trained on (recorded in its pretrain_config.json); several "
                                                   "dirs are scored as NAME/DIRNAME")
    packed_dir: str | None = Field(None, description="a stage-30 packed directory (scored with the training loss)")
    packed_split: str = Field("val", description="split of packed_dir")
    max_rows: int | None = Field(None, ge=1, description="first rows of the packed split (bytes prorated for bpb); "
                                                       "default: all, or with training_data the rows its trainer's "
                                                       "val loss scored (eval_max_rows), so the two agree")
    text_file: str | None = Field(None, description="a UTF-8 text file, scored as one text")
    dataset: str | None = Field(None, description="datasets.load_dataset name, e.g. wikitext (or json for files)")
    dataset_config: str | None = Field(None, description="its config, e.g. wikitext-2-raw-v1")
    data_files: str | list[str] | None = Field(None, description="data_files for load_dataset")
    split: str = Field("test", description="dataset split")
    text_field: str = Field("text", description="dataset column; rows are joined with blank lines")
    max_chars: int | None = Field(None, ge=1, description="score only this prefix of the text (bytes stay exact)")
    window: int | None = Field(None, ge=2, description="sliding-window length (default: the seq_len the checkpoint "
                                                        "was trained at, else the model's context)")
    stride: int | None = Field(None, ge=1, description="sliding-window step (default: half the window)")

    @model_validator(mode="after")
    def _one_origin(self) -> "PerplexityConfig":
        origins = [name for name in ("packed_dir", "text_file", "dataset") if getattr(self, name) is not None]
        origins += ["training_data"] if self.training_data else []
        if len(origins) != 1:
            raise ValueError("give exactly one of training_data (true), packed_dir, text_file, dataset "
                             f"(got {origins or 'none'})")
        return self


class TaskConfig(ConfigModel):
    task: str = Field(description=f"one of {', '.join(TASKS)}")
    source: TaskSource | None = Field(None, description="where the examples come from (default: the task's hub set)")
    max_samples: int | None = Field(None, ge=1, description="score a seeded subset of this many items")

    @field_validator("task")
    @classmethod
    def _known_task(cls, name: str) -> str:
        if name not in TASKS:
            raise ValueError(f"unknown task {name!r} (known: {', '.join(TASKS)})")
        return name


class GenerationSettings(ConfigModel):
    prompts_file: str | None = Field(None, description="{category: [prompt]} JSON (default: "
                                                       "config/evaluation/smoke_test_prompts.json)")
    prompt_format: Literal["plain", "chat"] = Field("plain", description="chat: one ChatML user turn per prompt")
    max_new_tokens: int = Field(64, ge=1, description="tokens generated at most per output")
    greedy: bool = Field(True, description="one greedy output per prompt")
    samples_per_prompt: int = Field(1, ge=0, description="sampled outputs per prompt (seeded)")
    temperature: float = Field(0.8, gt=0, le=2, description="sampling temperature (at most 2, as the API allows)")
    top_p: float = Field(0.95, gt=0, le=1, description="nucleus sampling mass")
    top_k: int = Field(50, ge=0, description="sample among the k most likely tokens (0: no limit)")
    repetition_ngram: int = Field(3, ge=1, description="n of the repeated n-gram rate")


class SFTLossConfig(ConfigModel):
    """Loss over the assistant tokens of a stage-60 SFT data split."""

    name: str = Field(min_length=1, description="label in the results and report")
    sft_dir: str = Field(description="a stage-60 SFT data directory")
    split: Literal["train", "val"] = Field("val", description="its split")
    max_rows: int | None = Field(None, ge=1, description="score only the first rows")


class SyntheticQAConfig(ConfigModel):
    """Exact-match answers to the synthetic world's facts, asked through the chat template."""

    world: WorldSettings = Field(description="{\"from\": corpus config} (its synthetic source, the same "
                                             "world), or the world's settings themselves")
    split: Literal["heldout", "validation", "train"] = Field(
        "heldout", description="which facts (and question wordings): validation to choose settings on, heldout "
                               "only to report")

    max_new_tokens: int = Field(32, ge=1, description="answer tokens generated at most")
    max_items: int | None = Field(None, ge=1, description="ask only the first items")


class PreferenceEvalConfig(ConfigModel):
    """Held-out preference pairs of a stage-85 DPO data dir, scored by the model and its reference (stage 95)."""

    name: str = Field(min_length=1, description="label in the results and report")
    dpo_dir: str | None = Field(None, description="a stage-85 DPO data directory (default: the one the DPO model "
                                                  "was trained on, recorded in its dpo_config.json)")
    split: Literal["train", "val"] = Field("val", description="its split")
    reference_model: str | None = Field(None, description="the reference (SFT) model dir; default: the base a "
                                                          "LoRA adapter records")
    beta: float = Field(0.1, gt=0, description="reward scale: the beta the model was trained with")
    max_pairs: int | None = Field(None, ge=1, description="score only the first pairs")
    generate: int = Field(8, ge=0, description="greedy answers to the first held-out prompts, in the samples")
    max_new_tokens: int = Field(64, ge=1, description="tokens per generated answer at most")


class EvaluationConfig(ConfigModel):
    batch_size: int = Field(8, ge=1, description="sequences per forward pass")
    device: str = Field("auto", description="torch device; auto = cuda if available, else cpu")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="auto keeps the checkpoint's dtype (as lm-eval does)")
    seed: int = Field(0, description="seeds subsampling and sampled generation")
    add_bos: bool = Field(True, description="start every scored/generated sequence with BOS, as in training "
                                            "(lm-eval: add_bos_token=True); false = plain lm_eval pretrained=DIR")
    max_length: int | None = Field(None, ge=2, description="scoring window (default and maximum: the model's "
                                                           "context); longer inputs lose their start")
    perplexity: list[PerplexityConfig] = Field([], description="texts to score")
    tasks: list[TaskConfig] = Field([], description="zero-shot tasks to score")
    generation: GenerationSettings | None = Field(None, description="generation smoke checks (off when absent)")
    sft_loss: list[SFTLossConfig] = Field([], description="assistant-token loss on SFT data splits")
    synthetic_qa: SyntheticQAConfig | None = Field(None, description="exact-match answers to synthetic-world facts "
                                                                     "(off when absent)")
    preference: list[PreferenceEvalConfig] = Field([], description="held-out DPO pairs: rewards, margins, win "
                                                                   "rates against the reference")

    @model_validator(mode="after")
    def _unique_names(self) -> "EvaluationConfig":
        for what, names in (("perplexity", [p.name for p in self.perplexity]),
                            ("tasks", [t.task for t in self.tasks])):
            duplicates = sorted({n for n in names if names.count(n) > 1})
            if duplicates:
                raise ValueError(f"{what}: duplicate names {duplicates}")
        return self
