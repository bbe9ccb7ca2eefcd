"""Benchmark pretraining against a peer, litgpt, at equal tokens: val loss (both eval modes), tokens/s and peak RSS.

Builds the data once from real text through the project's stages (10 corpus, the given .txt files split into
paragraphs -> 20 the demo's BPE tokenizer -> 30 256-token rows, whole documents held out as val), then trains, per
seed, the same shape (``--model``, default micro) on the same packed rows for the same tokens with the same schedule
numbers (``--steps`` x ``--micro-batch`` x 256, peak lr, min lr, warmup, AdamW betas (0.9, 0.95), weight decay 0.1,
clip 1.0, fp32, one thread):

- Lumi runs (``--lumi``): the real ``Trainer`` with the demo's pretraining config and each run's fields
  (``LUMI_RUNS``: the default recipe, AdamW + cosine, and the ablations of issue #31, each naming what it changes);
- ``litgpt_adamw``: ``benchmarks/litgpt_peer_run.py`` (what of litgpt it uses as-is is said there) in a scratch venv
  holding ``litgpt==0.5.13`` (created under ``.cache/`` on first use; torch is installed into it first from the
  same local wheel as the project's, so pip never pulls a CUDA build). litgpt is never a project dependency.

One evaluator scores every final model: ``lumi.eval.perplexity.evaluate_packed_split`` over every row of the val
split (BOS and PAD targets excluded), in both modes: ``docs`` (each document alone, the block-diagonal mask the
trainer and evaluator use) and ``causal`` (whole rows under a plain causal mask). litgpt's weights are converted to
transformers' Llama layout by litgpt's own converter and checked against litgpt's own forward (the ``conversion``
line). Tokens/s is timed over the steps after the 10th (compilation and startup excluded); peak RSS is the training
process's. Prints, per run, the mean over seeds and the min-max spread.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_litgpt.py \\
        --texts ../shared/data/samples/gutenberg_pg11.txt ../shared/data/samples/gutenberg_pg84.txt \\
        ../shared/data/samples/tinyshakespeare_train90.txt --workdir .cache/bench_litgpt
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from transformers import LlamaForCausalLM  # noqa: E402

from lumi.core.config import CONFIG_DIR, load_config  # noqa: E402
from lumi.eval.perplexity import evaluate_packed_split  # noqa: E402
from lumi.formats.metrics import read_metrics  # noqa: E402
from lumi.formats.packed import load_packed_split, read_packed_manifest  # noqa: E402
from lumi.model import build_model, load_architecture, parameter_counts  # noqa: E402
from lumi.train.objectives.pretrain import PretrainConfig, PretrainObjective, tokenizer_vocab_size  # noqa: E402
from lumi.train.trainer import Trainer  # noqa: E402

from bench_recipe import build_data  # noqa: E402

PEER = "litgpt_adamw"
LITGPT_SPEC = "litgpt==0.5.13"
TORCH_SPEC = "torch==2.13.0"  # the Makefile's: the CPU wheel from local disk
SKIP_STEPS = 10  # untimed first steps, both sides
LUMI_CODE = ("model.py", "lm/loss.py", "train/optim.py", "train/step.py")  # a change here retrains Lumi's runs


def litgpt_init(arch: dict) -> dict:
    """litgpt's pretraining init for a shape: std sqrt(2/5d), output projections 1/(sqrt(d) n_layers)."""
    return {"init_std": math.sqrt(2 / 5 / arch["hidden_size"]),
            "output_init_std": 1 / math.sqrt(arch["hidden_size"]) / arch["num_layers"]}


ADAMW = {"optimizer": "adamw", "schedule": "cosine"}
RECIPE = {"optimizer": "muon", "schedule": "wsd"}

# name -> (pretraining config fields, architecture fields as a function of the architecture, BOS targets scored).
# The AdamW ablations change one thing each on top of litgpt's init (the closest Lumi AdamW run to litgpt's), the
# recipe's on top of the default recipe.
LUMI_RUNS = {
    "lumi_recipe": (RECIPE, None, False),
    "lumi_adamw": (ADAMW, None, False),
    "adamw_litgpt_init": (ADAMW, litgpt_init, False),
    "adamw_litgpt_init_no_output_scale": (ADAMW, lambda arch: {"init_std": litgpt_init(arch)["init_std"]}, False),
    "adamw_litgpt_init_decay_all": ({**ADAMW, "decay_embeddings_and_norms": True}, litgpt_init, False),
    "adamw_litgpt_init_no_masking": ({**ADAMW, "document_masking": False}, litgpt_init, False),
    "adamw_litgpt_init_bos_targets": (ADAMW, litgpt_init, True),
    "recipe_litgpt_init": (RECIPE, litgpt_init, False),
    "recipe_no_masking": ({**RECIPE, "document_masking": False}, None, False),
    "recipe_wsd_decay_0.4": ({**RECIPE, "wsd_decay_fraction": 0.4}, None, False),
    "recipe_muon_lr_6e-3": ({**RECIPE, "muon_lr": 6e-3}, None, False),
}


def lumi_config(args: argparse.Namespace, run: str, seed: int, tokenizer: Path, packed: Path,
                workdir: Path) -> PretrainConfig:
    fields, arch_fields, _ = LUMI_RUNS[run]
    model = args.model
    if arch_fields is not None:  # the architecture with the run's fields, as a JSON file the config names
        base = load_architecture(args.model).model_dump(mode="json")
        model_path = workdir / "architectures" / f"{run}_{args.model}.json"
        model_path.parent.mkdir(parents=True, exist_ok=True)
        model_path.write_text(json.dumps({**base, **arch_fields(base)}))
        model = str(model_path)
    return load_config(PretrainConfig, CONFIG_DIR / "demo" / "pretrain.json", [], {
        "name": f"{run}_seed{seed}", "model": model, "seed": seed, "tokenizer_dir": str(tokenizer),
        "data_dirs": [str(packed)], "max_steps": args.steps, "micro_batch_size": args.micro_batch,
        "warmup_steps": args.warmup, "lr": args.lr, "min_lr": args.min_lr, "eval_interval": 10 * args.steps,
        "save_interval": 10 * args.steps, "eval_max_rows": 1, "tensorboard": False, "compile": args.compile,
        **fields})


def score(model, packed: Path) -> dict:
    """The one evaluator: mean loss over every val row, each document alone (docs) and whole rows (causal)."""
    val = load_packed_split(packed, "val")
    evaluated = evaluate_packed_split(model, val, batch_size=16)
    return {"val_docs": evaluated["loss"], "val_causal": evaluated["causal"]["loss"], "val_rows": val.num_rows,
            "parameters": model.num_parameters()}


def train_lumi(config: PretrainConfig, output: Path, bos_targets: bool) -> dict:
    """One Lumi run in its own process: val losses of the final model, tokens/s after the first steps, peak RSS."""
    torch.set_num_threads(1)
    import lumi.lm.loss
    unscored = lumi.lm.loss.UNSCORED_TARGETS
    if bos_targets:  # the ablation: BOS targets scored in training (the evaluator still leaves them out)
        lumi.lm.loss.UNSCORED_TARGETS = (lumi.lm.loss.PAD_ID,)
    run = Trainer(config, PretrainObjective(config), output, force=True)
    if run.fit() != 0:
        raise SystemExit(f"run {config.name} failed")
    lumi.lm.loss.UNSCORED_TARGETS = unscored
    records = {r["step"]: r for r in read_metrics(run.run_dir / "metrics.jsonl") if "time/elapsed_s" in r}
    last = max(records)
    tokens = records[last]["train/tokens"] - records[SKIP_STEPS]["train/tokens"]
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    model = LlamaForCausalLM.from_pretrained(run.run_dir / "final", dtype=torch.float32)
    return {"tok_per_s": tokens / (records[last]["time/elapsed_s"] - records[SKIP_STEPS]["time/elapsed_s"]),
            "peak_rss_mib": peak_rss, **score(model, Path(config.data_dirs[0]))}


def litgpt_python(venv: Path) -> Path:
    """The scratch venv's python, creating the venv (torch first, then litgpt) when missing."""
    python = venv / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        for spec in (TORCH_SPEC, LITGPT_SPEC):
            subprocess.run([str(python), "-m", "pip", "install", "-q", spec], check=True)
    return python


def train_litgpt(args: argparse.Namespace, seed: int, packed: Path, vocab_size: int, output: Path) -> dict:
    arch = load_architecture(args.model)
    shape = {"n_layer": arch.num_layers, "n_embd": arch.hidden_size, "n_head": arch.num_heads,
             "intermediate_size": arch.intermediate_size, "block_size": load_packed_split(packed, "train").seq_len,
             "rope_base": arch.rope_theta, "norm_eps": arch.rms_norm_eps}
    output.parent.mkdir(parents=True, exist_ok=True)
    command = [str(litgpt_python(args.litgpt_venv)), str(Path(__file__).with_name("litgpt_peer_run.py")),
               "--packed", str(packed), "--dtype", read_packed_manifest(packed)["dtype"],
               "--vocab-size", str(vocab_size), "--shape", json.dumps(shape), "--steps", str(args.steps),
               "--micro-batch", str(args.micro_batch), "--lr", str(args.lr), "--min-lr", str(args.min_lr),
               "--warmup", str(args.warmup), "--seed", str(seed), "--compile", str(int(args.litgpt_compile)),
               "--skip-steps", str(SKIP_STEPS), "--output", str(output)]
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    if done.returncode != 0:
        raise SystemExit(f"litgpt run failed:\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    torch.set_num_threads(1)
    model = build_model(load_architecture(args.model, vocab_size=vocab_size))
    model.load_state_dict(torch.load(output))
    return {**result, **score(model, packed), "conversion_error": conversion_error(model, result, packed)}


def conversion_error(model: LlamaForCausalLM, result: dict, packed: Path) -> float:
    """|litgpt's own causal loss - the converted model's| on the first 8 val rows, every next token a target."""
    batch = torch.from_numpy(load_packed_split(packed, "val").rows[:8].astype(np.int64))
    with torch.no_grad():
        logits = model(input_ids=batch[:, :-1], use_cache=False).logits
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1))
    return abs(float(loss) - result["check_causal_loss_all_targets"])


def result_path(workdir: Path, key: dict) -> Path:
    """Where a run's numbers are kept, named by everything that decides the run (``key``: the resolved config,
    architecture and training code, or the peer's arguments and script), so a later invocation reuses them only
    when none of that changed."""
    digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]
    return workdir / "results" / f"{digest}.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--texts", type=Path, nargs="+", required=True, help="plain-text files to train and hold out on")
    parser.add_argument("--runs", nargs="+", choices=[*LUMI_RUNS, PEER], default=["lumi_recipe", "lumi_adamw", PEER])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--model", default="micro", help="architecture (config/architectures/; rows stay 256 tokens)")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--micro-batch", type=int, default=16, help="rows of 256 tokens per step")
    parser.add_argument("--lr", type=float, default=3e-3, help="peak lr (both optimizers of the recipe too)")
    parser.add_argument("--min-lr", type=float, default=3e-4)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--compile", action="store_true", help="Lumi runs with compile: true")
    parser.add_argument("--litgpt-compile", type=int, default=1, help="1: torch.compile as litgpt pretrain does")
    parser.add_argument("--litgpt-venv", type=Path, default=REPO_ROOT / ".cache" / "litgpt-venv")
    parser.add_argument("--workdir", type=Path, default=REPO_ROOT / ".cache" / "bench_litgpt",
                        help="built data, runs and results (reused: stages whose output exists are skipped)")
    parser.add_argument("--jobs", type=int, default=1, help="runs trained at once (one thread each)")
    parser.add_argument("--json", type=Path, help="also write every run's numbers here")
    args = parser.parse_args()
    torch.set_num_threads(1)
    started = time.perf_counter()
    tokenizer, packed = build_data(args.workdir, args.texts)
    vocab_size = tokenizer_vocab_size(tokenizer)
    jobs = {}
    for seed in args.seeds:  # seed by seed, so every run has a first seed early
        for run in args.runs:
            if run == PEER:
                output = args.workdir / "runs" / f"{PEER}_seed{seed}.pt"
                key = {"run": run, "seed": seed, "args": {k: str(v) for k, v in vars(args).items()
                                                          if k not in ("runs", "seeds", "jobs", "json", "compile")},
                       "script": Path(__file__).with_name("litgpt_peer_run.py").read_text()}
                jobs[run, seed] = (result_path(args.workdir, key), train_litgpt, (args, seed, packed, vocab_size, output))
            else:
                config = lumi_config(args, run, seed, tokenizer, packed, args.workdir)
                key = {"run": run, "config": config.model_dump(mode="json"), "bos": LUMI_RUNS[run][2],
                       "architecture": load_architecture(config.model).model_dump(mode="json"),
                       "code": [(REPO_ROOT / "lumi" / name).read_text() for name in LUMI_CODE]}
                jobs[run, seed] = (result_path(args.workdir, key), train_lumi,
                                   (config, args.workdir / "runs", LUMI_RUNS[run][2]))
    with ProcessPoolExecutor(args.jobs, mp_context=get_context("spawn"), max_tasks_per_child=1) as pool:
        futures = {key: pool.submit(function, *arguments) for key, (path, function, arguments) in jobs.items()
                   if not path.is_file()}
        for key, future in futures.items():
            path = jobs[key][0]
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(future.result()))
    results = {key: json.loads(path.read_text()) for key, (path, _, _) in jobs.items()}
    for (run, seed), result in results.items():
        print(f"{run} seed {seed}: {json.dumps(result)}", flush=True)
    arch = load_architecture(args.model, vocab_size=vocab_size)
    print(f"\n{args.model} ({parameter_counts(arch)['total']:,} parameters), {args.steps} steps x {args.micro_batch} "
          f"x 256 = {args.steps * args.micro_batch * 256:,} tokens per run, lr {args.lr} -> {args.min_lr}, warmup "
          f"{args.warmup}, seeds {args.seeds}, val {results[next(iter(results))]['val_rows']} rows, Lumi compile {args.compile}, litgpt compile "
          f"{bool(args.litgpt_compile)}, wall {time.perf_counter() - started:.0f} s")
    print(f"{'run':<22} {'val docs (spread)':>24} {'val causal (spread)':>24} {'tok/s (spread)':>20} {'RSS MiB':>8}")
    for run in args.runs:
        per_seed = [results[run, seed] for seed in args.seeds]

        def cell(key: str, fmt: str) -> str:
            values = [r[key] for r in per_seed]
            return f"{statistics.mean(values):{fmt}} ({min(values):{fmt}}-{max(values):{fmt}})"

        print(f"{run:<22} {cell('val_docs', '.3f'):>24} {cell('val_causal', '.3f'):>24} {cell('tok_per_s', ',.0f'):>20} "
              f"{max(r['peak_rss_mib'] for r in per_seed):>8.0f}")
    if args.json:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                         "results": {f"{run}/{seed}": r for (run, seed), r in results.items()}},
                                        indent=1))


if __name__ == "__main__":
    main()
