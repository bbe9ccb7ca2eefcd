"""Human-readable output of an evaluation: console summary, ``report.md`` with tables, the comparison with an
earlier run, and PNG plots (training loss curves when the run's ``metrics.jsonl`` is found; benchmark scores against
chance)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from lumi.core.errors import LumiError
from lumi.core.files import atomic_write_text, read_json, text_lines
from lumi.formats.metrics import METRICS_FILE

RESULTS_FILE = "evaluation_results.json"
# The results file's tokenizer identity: a sha256 over every tokenizer file of the model dir
# (lumi.formats.model_io.tokenizer_fingerprint). Schema lumi-evaluation/1 called it "tokenizer_sha256", a name that
# elsewhere means the sha256 of spm.model alone (packed manifests), so /1 files are read with the old key renamed.
TOKENIZER_KEY = "tokenizer_fingerprint"
OLD_TOKENIZER_KEY = "tokenizer_sha256"
# Curve -> the keys it is read from, first present wins (lumi.train writes "train/loss" and "val/loss" on eval steps).
CURVE_KEYS = {"train": ("train/loss", "loss"), "val": ("val/loss", "val_loss")}
METRICS_SEARCH_DEPTH = 3  # the checkpoint dir and this many parents (lumi.train: run_dir/metrics.jsonl, run_dir/final)
PERPLEXITY_KEYS = ("loss", "perplexity", "bits_per_byte")


def load_previous_results(path: Path) -> dict[str, Any]:
    path = path / RESULTS_FILE if path.is_dir() else path
    results = read_json(path, what="previous evaluation results")
    if not isinstance(results, dict) or "tasks" not in results or "perplexity" not in results:
        raise LumiError(f"{path}: not an {RESULTS_FILE} (no 'tasks' / 'perplexity')")
    if TOKENIZER_KEY not in results and OLD_TOKENIZER_KEY in results:  # a lumi-evaluation/1 file
        results[TOKENIZER_KEY] = results.pop(OLD_TOKENIZER_KEY)
    try:
        _PreviousResults.model_validate(results)
    except ValidationError as exc:
        error = exc.errors()[0]
        field = ".".join(str(part) for part in error["loc"])
        raise LumiError(f"{path}: field '{field}': {error['msg']} (checked before evaluating, so --compare cannot "
                        "fail after the run)") from None
    return results


# What compare_results reads of an earlier results file, checked when --compare is parsed (extra fields pass).
class _Loose(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)


class _Metric(_Loose):
    value: float
    stderr: float | None = None


class _Task(_Loose):
    metrics: dict[str, _Metric]
    num_items: int


class _Perplexity(_Loose):
    loss: float
    perplexity: float
    bits_per_byte: float
    tokens: int


class _SyntheticQA(_Loose):
    num_items: int
    exact_match: _Metric | None = None
    refusal_rate: _Metric | None = None


class _PreviousResults(_Loose):
    tasks: dict[str, _Task]
    perplexity: dict[str, _Perplexity]
    synthetic_qa: _SyntheticQA | None = None


def compare_results(current: dict[str, Any], previous: dict[str, Any], previous_path: str) -> dict[str, Any]:
    """Rows of (section, name, metric, previous, current, delta, combined stderr) for every metric both runs have.

    ``combined_stderr`` = sqrt(se_prev^2 + se_cur^2): a delta several times larger is unlikely to be sampling noise
    (the two runs must have scored the same items for that to hold)."""
    rows = []
    for task, summary in current["tasks"].items():
        old = previous["tasks"].get(task)
        if old is None:
            continue
        for metric, value in summary["metrics"].items():
            if metric not in old["metrics"]:
                continue
            errors = [value["stderr"], old["metrics"][metric]["stderr"]]
            combined = math.sqrt(sum(e * e for e in errors)) if None not in errors else None
            rows.append({"section": "task", "name": task, "metric": metric, "previous": old["metrics"][metric]["value"],
                         "current": value["value"], "delta": value["value"] - old["metrics"][metric]["value"],
                         "combined_stderr": combined, "same_items": old["num_items"] == summary["num_items"]})
    for name, result in current["perplexity"].items():
        old = previous["perplexity"].get(name)
        if old is None:
            continue
        for metric in PERPLEXITY_KEYS:
            rows.append({"section": "perplexity", "name": name, "metric": metric, "previous": old[metric],
                         "current": result[metric], "delta": result[metric] - old[metric], "combined_stderr": None,
                         "same_items": old["tokens"] == result["tokens"]})
    for metric in ("exact_match", "refusal_rate"):
        if metric not in current.get("synthetic_qa", {}) or metric not in previous.get("synthetic_qa", {}):
            continue
        new, old = current["synthetic_qa"][metric], previous["synthetic_qa"][metric]
        errors = [new["stderr"], old["stderr"]]
        rows.append({"section": "synthetic_qa", "name": current["synthetic_qa"]["split"], "metric": metric,
                     "previous": old["value"], "current": new["value"], "delta": new["value"] - old["value"],
                     "combined_stderr": math.sqrt(sum(e * e for e in errors)) if None not in errors else None,
                     "same_items": previous["synthetic_qa"]["num_items"] == current["synthetic_qa"]["num_items"]})
    return {"previous": previous_path, "previous_model": previous.get("model", {}).get("path"),
            "same_tokenizer": previous.get(TOKENIZER_KEY) == current[TOKENIZER_KEY], "rows": rows}


def _fmt(value: float | None, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def task_rows(results: dict[str, Any]) -> list[str]:
    lines = []
    for task, summary in results["tasks"].items():
        for metric, value in summary["metrics"].items():
            baseline = summary.get("chance") if metric in ("acc", "acc_norm") else None
            lines.append(f"| {task} | {metric} | {_fmt(value['value'])} | {_fmt(value['stderr'])} | "
                         f"{_fmt(baseline)} | {_fmt(summary.get('majority_baseline'))} | {summary['num_items']} |")
    return lines


def sft_sections(results: dict[str, Any]) -> list[str]:
    """Report sections of the SFT and DPO measurements (assistant-token loss, synthetic-world exact match,
    preference pairs)."""
    lines = []
    if results.get("sft_loss"):
        lines += ["## SFT loss (assistant tokens only)", "", "| data | loss | perplexity | target tokens | rows |",
                  "|---|---:|---:|---:|---:|"]
        lines += [f"| {name} | {r['loss']:.4f} | {r['perplexity']:.3f} | {r['target_tokens']:,} | {r['rows']} |"
                  for name, r in results["sft_loss"].items()]
        lines.append("")
    if "synthetic_qa" in results:
        qa = results["synthetic_qa"]
        em = qa["exact_match"]
        lines += ["## Synthetic-world question answering", "",
                  f"Exact match on {qa['split']} facts asked with {qa['split']} wordings: **{em['value']:.3f}** "
                  f"± {_fmt(em['stderr'], 3)} (n={qa['num_items']}; answers in `samples/synthetic_qa.jsonl`)."]
        lines.append(f"Answered with one of the world's refusals: {_fmt(qa['refusal_rate']['value'], 3)}.")
        if qa.get("known_facts"):
            known = qa["known_facts"]
            lines.append(f"Of the {known['facts_known']} facts the compared model knew (cloze right), "
                         f"{_fmt(known['share_answered'], 3)} of the questions about them are answered exactly.")
        lines += ["", "| relation | exact match | stderr |", "|---|---:|---:|"]
        lines += [f"| {name} | {_fmt(v['value'], 3)} | {_fmt(v['stderr'], 3)} |"
                  for name, v in qa["exact_match_by_relation"].items()]
        lines.append("")
    if results.get("preference"):
        lines += ["## Preference pairs (policy against its reference)", "",
                  "| data | pairs | reward accuracy | margin | chosen reward | rejected reward | chosen log-prob win "
                  "rate | policy / reference prefer chosen |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
        lines += [f"| {name} | {r['pairs']} | {r['reward_accuracy']:.3f} | {r['reward_margin']:.4f} | "
                  f"{r['chosen_reward']:.4f} | {r['rejected_reward']:.4f} | {r['chosen_logp_win_rate']:.3f} | "
                  f"{r['policy_prefers_chosen']:.3f} / {r['reference_prefers_chosen']:.3f} |"
                  for name, r in results["preference"].items()]
        lines.append("")
    return lines


def console_summary(results: dict[str, Any]) -> str:
    lines = []
    for name, result in results["perplexity"].items():
        whole_rows = f" (whole rows: loss {result['causal']['loss']:.4f})" if "causal" in result else ""
        lines.append(f"perplexity {name}: loss {result['loss']:.4f}{whole_rows} ppl {result['perplexity']:.3f} "
                     f"bpb {result['bits_per_byte']:.4f} ({result['tokens']:,} tokens"
                     + (f" in {result['rows']} of {result['data']['rows_total']} rows)"
                        if "rows_total" in result["data"] else ")"))
    for task, summary in results["tasks"].items():
        scores = "  ".join(f"{m} {v['value']:.4f}" + (f" ±{v['stderr']:.4f}" if v["stderr"] is not None else "")
                           for m, v in summary["metrics"].items())
        chance = f"  (chance {summary['chance']:.4f})" if "chance" in summary else ""
        lines.append(f"{task}: {scores}{chance}  n={summary['num_items']}")
    for name, result in results.get("sft_loss", {}).items():
        lines.append(f"SFT loss {name}: {result['loss']:.4f} over {result['target_tokens']:,} assistant tokens in "
                     f"{result['rows']} of {result['rows_total']} rows")
    if "synthetic_qa" in results:
        qa = results["synthetic_qa"]
        known = qa.get("known_facts") or {}
        lines.append(f"synthetic_qa: exact match {qa['exact_match']['value']:.4f} n={qa['num_items']}"
                     + (f"  known facts answered {known['share_answered']:.4f} ({known['facts_known']} facts)"
                        if known.get("share_answered") is not None else ""))
    for name, r in results.get("preference", {}).items():
        lines.append(f"preference {name}: reward accuracy {r['reward_accuracy']:.4f} margin {r['reward_margin']:.4f} "
                     f"chosen log-prob win rate {r['chosen_logp_win_rate']:.4f} n={r['pairs']}")
    for mode, stats in results.get("generation", {}).get("modes", {}).items():
        s = stats["all"]
        lines.append(f"generation {mode}: {s['outputs']} outputs, stopped at EOS {s['stop_rate']:.0%}, "
                     f"mean {s['mean_tokens']:.1f} tokens, repeated n-gram rate {s['mean_repeated_ngram_rate']:.3f}")
    return "\n".join(lines)


def find_metrics_log(model_path: Path) -> Path | None:
    directory = model_path.resolve()
    for _ in range(METRICS_SEARCH_DEPTH + 1):
        if (directory / METRICS_FILE).is_file():
            return directory / METRICS_FILE
        directory = directory.parent
    return None


def read_loss_curves(path: Path) -> dict[str, list[tuple[float, float]]]:
    """(step, value) pairs of the train and val loss (``CURVE_KEYS``); lines that are not JSON objects are skipped."""
    curves: dict[str, list[tuple[float, float]]] = {name: [] for name in CURVE_KEYS}
    for line in text_lines(path.read_text(encoding="utf-8")):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if not isinstance(record, dict) or "step" not in record:
            continue
        for name, keys in CURVE_KEYS.items():
            value = next((record[k] for k in keys if isinstance(record.get(k), (int, float))), None)
            if value is not None:
                curves[name].append((record["step"], value))
    return curves


def plot_loss_curves(curves: dict[str, list[tuple[float, float]]], path: Path) -> None:
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 4))
    for key, label, style in (("train", "train loss", "-"), ("val", "val loss", "o-")):
        if curves[key]:
            steps, values = zip(*curves[key])
            axis.plot(steps, values, style, label=label, markersize=3)
    axis.set_xlabel("step")
    axis.set_ylabel("loss (nats/token)")
    axis.legend()
    axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def plot_benchmarks(results: dict[str, Any], path: Path) -> None:
    """acc per multiple-choice task with its standard error, and chance as a marker on each bar."""
    import matplotlib.pyplot as plt

    tasks = [(t, s) for t, s in results["tasks"].items() if "chance" in s]
    figure, axis = plt.subplots(figsize=(max(4, 1.3 * len(tasks) + 2), 4))
    positions = range(len(tasks))
    accuracy = [s["metrics"]["acc"]["value"] for _, s in tasks]
    errors = [s["metrics"]["acc"]["stderr"] or 0.0 for _, s in tasks]
    axis.bar(positions, accuracy, yerr=errors, capsize=4, color="#4c72b0", label="acc (± stderr)")
    axis.scatter(positions, [s["chance"] for _, s in tasks], marker="_", s=900, color="#c44e52", zorder=3,
                 label="chance")
    axis.set_xticks(list(positions), [t for t, _ in tasks], rotation=20)
    axis.set_ylim(0, 1)
    axis.set_ylabel("accuracy")
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def make_plots(results: dict[str, Any], model_path: Path, output_dir: Path) -> tuple[dict[str, str], list[str]]:
    """Plot files written (name -> file) and notes on what could not be plotted."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only; never a display
    except ImportError:
        return {}, ["plots skipped: matplotlib is not installed (pip install matplotlib)"]
    plots, notes = {}, []
    metrics_log = find_metrics_log(model_path)
    curves = read_loss_curves(metrics_log) if metrics_log else None
    if curves and any(curves.values()):
        plot_loss_curves(curves, output_dir / "loss_curves.png")
        plots["loss_curves"] = "loss_curves.png"
        notes.append(f"loss curves from {metrics_log}")
    else:
        notes.append(f"no {METRICS_FILE} with losses found in {model_path} or its {METRICS_SEARCH_DEPTH} parents")
    if any("chance" in s for s in results["tasks"].values()):
        plot_benchmarks(results, output_dir / "benchmarks.png")
        plots["benchmarks"] = "benchmarks.png"
    return plots, notes


def render_report(results: dict[str, Any], plots: dict[str, str], notes: list[str]) -> str:
    model = results["model"]
    lines = ["# Evaluation report", "",
             f"Model `{model['path']}`: {model['parameters']:,} parameters, context {model['context_length']}, "
             f"{model['dtype']} on {model['device']}. Tokenizer fingerprint `{results[TOKENIZER_KEY][:16]}…`. "
             f"Evaluated {results['started']} to {results['finished']}.", ""]
    if results["perplexity"]:
        lines += ["## Perplexity", "", "| data | loss (nats/token) | perplexity | bits/byte | tokens | seconds |",
                  "|---|---:|---:|---:|---:|---:|"]
        lines += [f"| {name} | {r['loss']:.4f} | {r['perplexity']:.3f} | {r['bits_per_byte']:.4f} | "
                  f"{r['tokens']:,} | {r['seconds']} |" for name, r in results["perplexity"].items()]
        lines.append("")
        notes_on_data = [f"- {name}: {r['data']['chosen']}" for name, r in results["perplexity"].items()
                         if r.get("data", {}).get("chosen")]
        notes_on_data += [f"- {name}: sliding window of {r['window']} tokens, stride {r['stride']}"
                          for name, r in results["perplexity"].items() if "window" in r]
        notes_on_data += [f"- {name}: each packed document scored alone; whole rows (documents see the earlier ones "
                          f"of their row): loss {r['causal']['loss']:.4f}, perplexity {r['causal']['perplexity']:.3f}"
                          for name, r in results["perplexity"].items() if "causal" in r]
        lines += [*notes_on_data, ""] if notes_on_data else []
    if results["tasks"]:
        lines += ["## Zero-shot tasks", "", "Log-likelihood scoring as lm-evaluation-harness (same prompts; acc_norm "
                  "divides by the choice's length in characters).", "",
                  "| task | metric | value | stderr | chance | majority | n |", "|---|---|---:|---:|---:|---:|---:|"]
        lines += task_rows(results)
        for task, summary in results["tasks"].items():
            if summary.get("truncated_items"):
                lines.append(f"\n{task}: {summary['truncated_items']} item(s) truncated from the left to fit "
                             f"{results['scoring_max_length']} tokens.")
            if "acc_by_group" in summary:
                lines += ["", f"{task} accuracy by group:", "", "| group | acc | stderr |", "|---|---:|---:|"]
                lines += [f"| {group} | {_fmt(v['value'])} | {_fmt(v['stderr'])} |"
                          for group, v in summary["acc_by_group"].items()]
        lines.append("")
    if "generation" in results:
        lines += ["## Generation smoke checks", "",
                  f"Prompts from `{results['generation']['prompts_file']}`; repeated n-gram rate over "
                  f"{results['generation']['repetition_ngram']}-grams of output tokens. Outputs in "
                  "`generations.jsonl`.", "",
                  "| mode | category | outputs | stopped at EOS | mean tokens | repeated n-gram rate |",
                  "|---|---|---:|---:|---:|---:|"]
        for mode, stats in results["generation"]["modes"].items():
            for category, s in [("all", stats["all"]), *stats["by_category"].items()]:
                lines.append(f"| {mode} | {category} | {s['outputs']} | {s['stop_rate']:.0%} | "
                             f"{s['mean_tokens']:.1f} | {s['mean_repeated_ngram_rate']:.3f} |")
        lines.append("")
    lines += sft_sections(results)
    if "comparison" in results:
        comparison = results["comparison"]
        lines += ["## Comparison", "", f"Against `{comparison['previous']}` (model `{comparison['previous_model']}`)."]
        if not comparison["same_tokenizer"]:
            lines.append("The tokenizers differ: compare bits/byte and task scores, not per-token loss or perplexity.")
        lines += ["", "| section | name | metric | previous | current | delta | combined stderr | same items |",
                  "|---|---|---|---:|---:|---:|---:|---|"]
        lines += [f"| {r['section']} | {r['name']} | {r['metric']} | {_fmt(r['previous'])} | {_fmt(r['current'])} | "
                  f"{r['delta']:+.4f} | {_fmt(r['combined_stderr'])} | {'yes' if r['same_items'] else 'no'} |"
                  for r in comparison["rows"]]
        lines.append("")
    if plots or notes:
        lines += ["## Plots", ""]
        lines += [f"![{name}]({file})" for name, file in plots.items()]
        lines += [f"- {note}" for note in notes]
        lines.append("")
    return "\n".join(lines)


def write_report(results: dict[str, Any], model_path: Path, output_dir: Path) -> None:
    plots, notes = make_plots(results, model_path, output_dir)
    atomic_write_text(output_dir / "report.md", render_report(results, plots, notes))
