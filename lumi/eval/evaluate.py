"""The evaluator: every measurement of an evaluation config on one checkpoint directory (``evaluate_model``), the
results ``lumi evaluate`` (``lumi/stages/evaluate.py``, the command line) writes as ``evaluation_results.json``.
The results schema is documented in ``docs/EVALUATION.md``."""

from __future__ import annotations

import logging
import platform
import time
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from lumi import __version__
from lumi.core.config import config_to_dict
from lumi.core.errors import LumiError
from lumi.core.files import atomic_write_jsonl, read_text, sha256_file
from lumi.eval.config import DEFAULT_PROMPTS, EvaluationConfig, PerplexityConfig, TaskConfig
from lumi.eval.generation import load_prompts, run_generation
from lumi.eval.preference import evaluate_preferences
from lumi.eval.perplexity import evaluate_packed_split, read_dataset_text, text_perplexity
from lumi.eval.report import TOKENIZER_KEY
from lumi.eval.scoring import score_items
from lumi.eval.sft_loss import sft_split_loss
from lumi.eval.synthetic_qa import evaluate_synthetic_qa, known_facts
from lumi.eval.tasks import get_task, subsample
from lumi.eval.training_record import TrainingRecord, training_record
from lumi.formats.model_io import context_length, tokenizer_fingerprint
from lumi.formats.lineage import require_same_world
from lumi.formats.packed import check_packed_tokenizer, load_packed_split, read_packed_manifest
from lumi.formats.tokenizer import SPM_MODEL
from lumi.loading import load_for_evaluation

log = logging.getLogger(__name__)

RESULTS_SCHEMA = "lumi-evaluation/2"
LIBRARIES = ("torch", "transformers", "tokenizers", "sentencepiece", "datasets", "numpy")


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version(), "lumi": __version__}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def file_digests(*paths: str | None) -> dict[str, str]:
    return {path: sha256_file(path) for path in paths if path is not None and Path(path).is_file()}


def scored_rows(spec: PerplexityConfig, record: TrainingRecord) -> str:
    """Which rows a training-data measurement scores, said in its description: the trainer's, unless max_rows."""
    if spec.max_rows is not None:
        return f"; the first {spec.max_rows} rows (max_rows)"
    if record.eval_rows is not None:
        return f"; the first {record.eval_rows} rows, as its trainer's val loss (eval_max_rows)"
    return "; every row"


def training_data_specs(spec: PerplexityConfig, record: TrainingRecord | None, model_path: Path,
                        config_key: str) -> list[tuple[str, PerplexityConfig, str]]:
    """(result name, concrete spec, what was chosen and why) per measurement ``spec`` stands for: itself, or with
    ``training_data`` one packed-dir spec per data dir the checkpoint records; ``config_key`` is where ``spec`` is
    in the config (e.g. ``perplexity.0``), for the messages."""
    if not spec.training_data:
        return [(spec.name, spec, "")]
    if record is None or not record.data_dirs:
        raise LumiError(f"perplexity {spec.name!r}: {model_path} records no training data (no pretrain_config.json "
                        f"with data_dirs); name the data: --set '{config_key}={{\"name\": \"{spec.name}\", "
                        '"packed_dir": "DIR"}\'')
    specs = []
    for data_dir in record.data_dirs:
        if not Path(data_dir).is_dir():
            raise LumiError(f"perplexity {spec.name!r}: {data_dir}, the data {model_path} was trained on (recorded in "
                            f"{record.file}), is not found from {Path.cwd()}; run from where training ran, or "
                            f"name the data: --set {config_key}.packed_dir=DIR --set {config_key}.training_data=false")
        name = spec.name if len(record.data_dirs) == 1 else f"{spec.name}/{Path(data_dir).name}"
        rows = spec.max_rows or record.eval_rows
        concrete = spec.model_copy(update={"training_data": False, "packed_dir": data_dir, "max_rows": rows})
        specs.append((name, concrete, f"the {spec.packed_split} split of {data_dir}, the data the checkpoint was "
                                      f"trained on (recorded in {record.file}){scored_rows(spec, record)}"))
    return specs


def measure_finetune_data(model: PreTrainedModel, model_path: Path, spec: PerplexityConfig, record: TrainingRecord,
                          batch_size: int, results: dict[str, Any]) -> None:
    """``training_data`` for a fine-tuned model: its own data, not the pretraining text. After SFT, the assistant-
    token loss on the val split of the SFT data dir it was trained on (``sft_loss``, what its trainer's val loss
    measures); after DPO, nothing here: its own pairs are the ``preference`` measurement's default."""
    if record.stage == "dpo":
        log.info("perplexity %r: skipped for a DPO model (its own held-out pairs are scored by 'preference')",
                 spec.name)
        return
    sft_dir = record.data_dirs[0] if record.data_dirs else None
    if sft_dir is None or not Path(sft_dir).is_dir():
        raise LumiError(f"perplexity {spec.name!r}: {sft_dir}, the SFT data {model_path} was trained on (recorded "
                        f"in {record.file}), is not found from {Path.cwd()}; run from where training ran, or name "
                        f"the data: --set 'sft_loss=[{{\"name\": \"val\", \"sft_dir\": \"DIR\"}}]' --set perplexity=[]")
    chosen = (f"the {spec.packed_split} split of {sft_dir}, the SFT data the model was trained on (recorded in "
              f"{record.file}), assistant tokens only{scored_rows(spec, record)}")
    log.info("SFT loss: %s = %s", spec.name, chosen)
    result = sft_split_loss(model, model_path, sft_dir, spec.packed_split, batch_size,
                            spec.max_rows or record.eval_rows)
    result["data"] = {"sft_dir": sft_dir, "split": spec.packed_split, "chosen": chosen}
    results.setdefault("sft_loss", {})[spec.name] = result


def own_dpo_dir(dpo_dir: str | None, record: TrainingRecord | None, model_path: Path) -> str:
    """The preference measurement's data: as configured, else the DPO data dir the model was trained on."""
    if dpo_dir is not None:
        return dpo_dir
    if record is None or record.stage != "dpo" or not record.data_dirs:
        raise LumiError(f"preference: {model_path} is not a DPO model that records its data (no dpo_config.json); "
                        "name the pairs: --set preference.0.dpo_dir=DIR")
    return record.data_dirs[0]


def measure_perplexity(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, spec: PerplexityConfig,
                       model_path: Path, max_length: int, batch_size: int,
                       trained_seq_len: int | None = None) -> dict[str, Any]:
    started = time.perf_counter()
    if spec.packed_dir is not None:
        manifest = read_packed_manifest(spec.packed_dir)
        # Packed rows are token ids: scoring them with another tokenizer's model would be silently meaningless.
        # Checkpoints carry a copy of the stage-20 model; one without it (a foreign model) cannot be checked.
        if (model_path / SPM_MODEL).is_file():
            check_packed_tokenizer(spec.packed_dir, model_path)
        split = load_packed_split(spec.packed_dir, spec.packed_split)
        if split.seq_len > max_length:
            raise LumiError(f"{spec.packed_dir}: rows of {split.seq_len} tokens exceed the scoring context of "
                            f"{max_length}; evaluate on data packed with a --seq-len the model was built for")
        result = evaluate_packed_split(model, split, batch_size=batch_size, max_rows=spec.max_rows)
        result["data"] = {"packed_dir": spec.packed_dir, "split": spec.packed_split, "rows_total": split.num_rows,
                          "seq_len": split.seq_len, "tokenizer_sha256": manifest.get("tokenizer_sha256")}
    else:
        if spec.text_file is not None:
            text = read_text(spec.text_file, "text file")
            data: dict[str, Any] = {"text_file": spec.text_file, "sha256": sha256_file(spec.text_file)}
        else:
            text = read_dataset_text(spec.dataset, spec.dataset_config, spec.split, spec.text_field,  # type: ignore
                                     spec.data_files)
            data = {"dataset": spec.dataset, "dataset_config": spec.dataset_config, "split": spec.split,
                    "data_files": spec.data_files}
        data["chars_total"] = len(text)
        text = text[:spec.max_chars] if spec.max_chars else text
        data["chars_scored"] = len(text)
        # Default: the length the model was trained at; positions beyond it were never trained and score worse.
        window = min(spec.window or trained_seq_len or max_length, max_length)
        result = text_perplexity(model, tokenizer, text, window, spec.stride or max(1, window // 2), batch_size)
        result["data"] = data
    result["seconds"] = round(time.perf_counter() - started, 3)
    return result


def load_task(spec: TaskConfig, config_key: str) -> tuple[Any, Any, list]:
    """(task, source, items) of one configured task: read for every task before the first is scored, so a bad
    file of a later task fails the run before any time is spent (and no finished task's results are lost)."""
    task = get_task(spec.task)
    source = spec.source or task.default_source
    return task, source, task.load(source, config_key)


def measure_task(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, spec: TaskConfig,
                 loaded_task: tuple[Any, Any, list], max_length: int, batch_size: int,
                 seed: int) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    task, source, loaded = loaded_task
    items = subsample(loaded, spec.max_samples, seed)
    started = time.perf_counter()
    summary, records = score_items(model, tokenizer, task, items, max_length, batch_size)
    seconds = time.perf_counter() - started
    summary.update(items_available=len(loaded), seconds=round(seconds, 3),
                   items_per_second=round(len(items) / seconds, 3) if seconds > 0 else None,
                   data={"source": source.describe(), **({"sha256": file_digests(source.path, source.labels_path)}
                                                         if source.path else {})})
    return summary, records


def evaluate_model(config: EvaluationConfig, model_path: Path, output_dir: Path,
                   known: set[str] | None = None) -> dict[str, Any]:
    """Run every measurement in ``config``; per-item records go to ``output_dir/samples/``. ``known``: ids of the
    synthetic facts an earlier model's cloze got right (from ``--compare``)."""
    started = now()
    require_same_world(model_path, "the evaluation config's synthetic tasks", config_to_dict(config))
    model, tokenizer = load_for_evaluation(model_path, config.device, config.dtype, config.add_bos)
    loaded_tasks = [load_task(spec, f"tasks.{index}.source") for index, spec in enumerate(config.tasks)]
    torch.manual_seed(config.seed)
    model_context = context_length(model)
    if config.max_length is not None and config.max_length > model_context:
        raise LumiError(f"max_length {config.max_length} exceeds the model's context of {model_context} tokens")
    max_length = config.max_length or model_context
    results: dict[str, Any] = {
        "schema": RESULTS_SCHEMA,
        "model": {"path": str(model_path.resolve()), "parameters": model.num_parameters(),
                  "context_length": model_context, "vocab_size": model.config.vocab_size,
                  "dtype": str(model.dtype).removeprefix("torch."), "device": str(next(model.parameters()).device),
                  "weights_sha256": file_digests(*sorted(str(p) for p in model_path.glob("*.safetensors")))},
        TOKENIZER_KEY: tokenizer_fingerprint(model_path),
        "scoring_max_length": max_length,
        "config": config_to_dict(config),
        "versions": library_versions(),
        "started": started,
        "perplexity": {},
        "tasks": {},
    }
    record = training_record(model_path)
    if record is not None:
        results["model"]["trained_seq_len"] = record.seq_len
    for index, spec in enumerate(config.perplexity):
        if spec.training_data and record is not None and record.stage != "pretrain":
            measure_finetune_data(model, model_path, spec, record, config.batch_size, results)
            continue
        for name, concrete, chosen in training_data_specs(spec, record, model_path, f"perplexity.{index}"):
            log.info("perplexity: %s%s", name, f" = {chosen}" if chosen else "")
            result = measure_perplexity(model, tokenizer, concrete, model_path, max_length, config.batch_size,
                                        record.seq_len if record else None)
            if chosen:
                result["data"]["chosen"] = chosen
            results["perplexity"][name] = result
    samples_dir = output_dir / "samples"
    for spec, loaded_task in zip(config.tasks, loaded_tasks):
        log.info("task: %s", spec.task)
        summary, records = measure_task(model, tokenizer, spec, loaded_task, max_length, config.batch_size,
                                        config.seed)
        results["tasks"][spec.task] = summary
        atomic_write_jsonl(samples_dir / f"{spec.task}.jsonl", records)
    if config.generation is not None:
        settings = config.generation
        log.info("generation smoke checks")
        prompts = load_prompts(settings.prompts_file or DEFAULT_PROMPTS)
        outputs, summary = run_generation(
            model, tokenizer, prompts, settings.prompt_format, settings.max_new_tokens, settings.greedy,
            settings.samples_per_prompt,
            {"temperature": settings.temperature, "top_p": settings.top_p, "top_k": settings.top_k},
            settings.repetition_ngram, config.seed, max_batch=config.batch_size)
        results["generation"] = {"prompts_file": str(settings.prompts_file or DEFAULT_PROMPTS), **summary}
        atomic_write_jsonl(output_dir / "generations.jsonl", outputs)
    for spec in config.sft_loss:
        log.info("SFT loss: %s", spec.name)
        results.setdefault("sft_loss", {})[spec.name] = sft_split_loss(model, model_path, spec.sft_dir, spec.split,
                                                                       config.batch_size, spec.max_rows)
    if config.synthetic_qa is not None:
        qa = config.synthetic_qa
        log.info("synthetic-world question answering (%s facts)", qa.split)
        summary, records = evaluate_synthetic_qa(model, tokenizer, qa.world, qa.split, qa.max_new_tokens,
                                                 config.batch_size, qa.max_items, known)
        results["synthetic_qa"] = summary
        atomic_write_jsonl(samples_dir / "synthetic_qa.jsonl", records)
    for spec in config.preference:
        log.info("preference pairs: %s", spec.name)
        summary, records = evaluate_preferences(model, tokenizer, model_path, own_dpo_dir(spec.dpo_dir, record,
                                                                                          model_path), spec.split,
                                                spec.reference_model, spec.beta, config.batch_size, spec.max_pairs,
                                                spec.generate, spec.max_new_tokens, config.dtype)
        results.setdefault("preference", {})[spec.name] = summary
        atomic_write_jsonl(samples_dir / f"preference_{spec.name}.jsonl", records)
    results["finished"] = now()
    return results


def compared_known_facts(compare: Path | None) -> set[str] | None:
    """The facts the compared (pretrained) model knew: its ``samples/synthetic_cloze.jsonl``, when it has one."""
    if compare is None:
        return None
    samples = (compare if compare.is_dir() else compare.parent) / "samples" / "synthetic_cloze.jsonl"
    return known_facts(samples) if samples.is_file() else None
