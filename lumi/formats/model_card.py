"""``README.md`` in the Hugging Face model-card format for every final model dir (pretrain, SFT, DPO) and every
export, written from the files the run left there, so the dir can be uploaded to the hub as it is.

The YAML header carries what the hub reads (license, datasets, base model, language, pipeline tag, library, tags);
the body says how the model was trained (the resolved settings of ``pretrain_config.json`` / ``sft_config.json`` /
``dpo_config.json``, steps and tokens from ``trainer_state.json``), the evaluation numbers the run measured (the
last validation losses of the run's ``metrics.jsonl``) and, for an export, how to run the GGUF. Only hub ids (``a/b``)
go into ``datasets`` / ``base_model``; local paths are named in the body."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from lumi.core.files import atomic_write_text

CARD = "README.md"
TRAINING_RECORDS = {"pretrain_config.json": "pretrained from scratch (lumi pretrain)",
                    "sft_config.json": "supervised fine-tuning (lumi sft)",
                    "dpo_config.json": "preference tuning (lumi dpo)"}
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def _read(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _last_metrics(run_dir: Path) -> dict[str, float]:
    """The last logged value of every validation metric (``val/...``) in the run's ``metrics.jsonl``."""
    found: dict[str, float] = {}
    try:
        lines = (run_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    except OSError:
        return found
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        found.update({k: v for k, v in record.items() if k.startswith("val/") and isinstance(v, (int, float))})
    return found


def _data_sources(config: dict[str, Any]) -> list[str]:
    """Dataset names the run's data dirs record: corpus and SFT/DPO sources (hub ids where they came from the hub)."""
    names: list[str] = []
    dirs = list(config.get("data_dirs") or []) + ([config["data_dir"]] if config.get("data_dir") else [])
    for directory in map(Path, dirs):
        manifest = _read(directory / "final_manifest.json") or _read(directory / "manifest.json") or {}
        corpus = manifest.get("corpus", {}).get("dir")
        if corpus:
            manifest = _read(Path(corpus) / "manifest.json") or {}
        for source in (manifest.get("config") or {}).get("sources", []):
            names.append(source.get("dataset") or source.get("path") or source.get("name") or source.get("type"))
    return [n for n in dict.fromkeys(names) if isinstance(n, str)]


def _yaml_list(key: str, values: list[str]) -> list[str]:
    return [f"{key}:"] + [f"- {json.dumps(v)}" for v in values] if values else []


def model_card(model_dir: Path, export: dict[str, Any] | None = None, title: str | None = None) -> str:
    """The card text for ``model_dir`` (the trained dir; for an export, the dir it was exported from); ``title``
    defaults to the dir's name."""
    record_name = next((name for name in TRAINING_RECORDS if (model_dir / name).is_file()), None)
    resolved = _read(model_dir / record_name) if record_name else None
    config = (resolved or {}).get("config", {})
    summary = _read(model_dir / "trainer_state.json") or {}
    base = config.get("base_model") or config.get("model_path")
    datasets = _data_sources(config)
    hub_datasets = [d for d in datasets if HUB_ID.match(d)]
    header = ["---", "license: unknown  # set the license your training data allows", "language:", "- en",
              "pipeline_tag: text-generation", f"library_name: {'gguf' if export else 'transformers'}",
              "tags:", "- lumi-lab", "- llama", *(["- gguf"] if export else [])]
    header += _yaml_list("datasets", hub_datasets)
    if base and HUB_ID.match(str(base)):
        header.append(f"base_model: {json.dumps(str(base))}")
    header.append("---")
    body = [f"# {title or model_dir.resolve().name}", "",
            "A LLaMA-architecture model trained with Lumi-Lab "
            f"({TRAINING_RECORDS.get(record_name, 'no training record in this dir')}).", ""]
    body += ["## Training", ""]
    if resolved:
        if base:
            body.append(f"- base model: `{base}`")
        if datasets:
            body.append(f"- data: {', '.join(f'`{d}`' for d in datasets)}")
        for key in ("step", "tokens_seen"):
            if key in summary:
                body.append(f"- {key.replace('_', ' ')}: {summary[key]:,}")
        body += ["", f"Resolved settings (`{record_name}`):", "", "```json",
                 json.dumps(config, indent=2, sort_keys=True), "```", ""]
    else:
        body += ["No training record (pretrain_config.json, sft_config.json or dpo_config.json) in this dir.", ""]
    metrics = _last_metrics(model_dir.parent)
    body += ["## Evaluation", ""]
    body += ([f"| metric | value |", "|---|---|"] + [f"| {k} | {v:.4f} |" for k, v in sorted(metrics.items())]
             if metrics else ["The run logged no validation metrics; see `lumi evaluate`."])
    body.append("")
    if export:
        body += _export_section(export)
    return "\n".join(header + body)


def _export_section(export: dict[str, Any]) -> list[str]:
    name = export["file"]
    lines = ["## Run it", "", f"`{name}` ({export['dtype']}, sha256 `{export['sha256'][:16]}…`):", "", "```bash",
             f"llama-cli -m {name} -p \"Once upon a time\" -n 64          # completion",
             *([f"llama-cli -m {name} -cnv                               # chat (the model's chat template)"]
               if export.get("chat_template") else []),
             f"llama-server -m {name} --port 8080                     # OpenAI-compatible API",
             "ollama create lumi -f Modelfile && ollama run lumi", "```", ""]
    agreement = export.get("agreement")
    if agreement:
        lines += ["## Agreement with the source model", "",
                  f"Checked with {agreement['llama_cpp']}: {agreement['texts_identical']}/{agreement['texts']} texts "
                  f"tokenize to identical ids, largest logit difference {agreement['logits_max_abs_diff']:.2g} on "
                  f"{agreement['prompts']} prompts, {agreement['greedy_identical']}/{agreement['prompts']} greedy "
                  f"continuations of {agreement['new_tokens']} tokens identical.", ""]
    return lines


def write_model_card(directory: str | Path, model_dir: str | Path | None = None,
                     export: dict[str, Any] | None = None, title: str | None = None) -> None:
    """Write ``directory/README.md`` describing ``model_dir`` (default: ``directory`` itself)."""
    directory = Path(directory)
    atomic_write_text(directory / CARD, model_card(Path(model_dir) if model_dir else directory, export, title))
