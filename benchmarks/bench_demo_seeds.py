"""Benchmark the demo over seeds: does what the README quotes hold on any seed?

Runs ``runs/demo.sh --seed N --skip-serve --skip-export`` once per seed (the world's seed and every training seed;
stages 10-97), each into its own directory, then prints per figure of the demo report the mean, min and max over the
seeds, and per seed the answers DPO (stage 95) and GRPO (stage 97, against DPO) gained and lost on the validation
questions (what their settings were chosen on) and on the held-out questions (reported only). Writes the same as JSON
(``--output``) with the machine, date and command.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/bench_demo_seeds.py --seeds 0 1 2 3 4

``--jobs 5`` runs the seeds side by side (with OMP_NUM_THREADS=1 each on a shared machine).

``--from 85`` reruns only DPO and its evaluation on the seeds' earlier output (a DPO change measured on the same SFT
models), ``--from 97`` only GRPO and its evaluation (on the same DPO models); ``--from 40 --resume`` continues
interrupted runs from their checkpoints; ``--collect`` only reads the runs
already in ``--out-root``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("demo_report", REPO_ROOT / "runs" / "demo_report.py")
demo_report = importlib.util.module_from_spec(_spec)
sys.path.insert(0, str(REPO_ROOT))
_spec.loader.exec_module(demo_report)

FIGURES = {  # figure -> (stage, what it is); the order of the table
    "pretrain_val_loss": ("40", "pretraining val loss (nats/token)"),
    "cloze_acc": ("50", "held-out fact cloze accuracy"),
    "sft_validation_em": ("80", "SFT exact match, validation questions"),
    "sft_heldout_em": ("80", "SFT exact match, held-out questions"),
    "dpo_reward_accuracy": ("95", "DPO reward accuracy, validation pairs"),
    "dpo_validation_em": ("95", "DPO exact match, validation questions"),
    "dpo_heldout_em": ("95", "DPO exact match, held-out questions"),
    "dpo_validation_gained": ("95", "validation answers DPO gained"),
    "dpo_validation_lost": ("95", "validation answers DPO lost"),
    "dpo_heldout_gained": ("95", "held-out answers DPO gained"),
    "dpo_heldout_lost": ("95", "held-out answers DPO lost"),
    "grpo_validation_em": ("97", "GRPO exact match, validation questions"),
    "grpo_heldout_em": ("97", "GRPO exact match, held-out questions"),
    "grpo_validation_gained": ("97", "validation answers GRPO gained (vs DPO)"),
    "grpo_validation_lost": ("97", "validation answers GRPO lost (vs DPO)"),
    "grpo_heldout_gained": ("97", "held-out answers GRPO gained (vs DPO)"),
    "grpo_heldout_lost": ("97", "held-out answers GRPO lost (vs DPO)"),
    "dpo_heldout_refusals": ("95", "DPO refusal rate, held-out questions"),
    "grpo_heldout_refusals": ("97", "GRPO refusal rate, held-out questions"),
    "dpo_heldout_words": ("95", "DPO mean answer length (words), held-out questions"),
    "grpo_heldout_words": ("97", "GRPO mean answer length (words), held-out questions"),
}


def run_demo(seed: int, out: Path, start_stage: int, resume: bool) -> float:
    """One demo run (stages ``start_stage``-97); its wall-clock seconds. A failing stage stops the
    benchmark."""
    venv_bin = Path(sys.executable).parent
    env = {**os.environ, "OUT": str(out), "PATH": f"{venv_bin}{os.pathsep}{os.environ.get('PATH', '')}"}
    command = ["bash", str(REPO_ROOT / "runs" / "demo.sh"), "--seed", str(seed), "--skip-serve", "--skip-export",
               "--from", str(start_stage)] + (["--resume"] if resume else [])
    started = time.monotonic()
    with open(out.parent / f"seed{seed}.log", "w") as log:
        result = subprocess.run(command, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    if result.returncode != 0:
        sys.exit(f"seed {seed}: runs/demo.sh failed (exit {result.returncode}); see {out.parent / f'seed{seed}.log'}")
    return time.monotonic() - started


def summary(per_seed: dict[int, dict]) -> dict[str, dict[str, float]]:
    rows = {}
    for name in FIGURES:
        values = [figures[name] for figures in per_seed.values() if figures.get(name) is not None]
        if values:
            rows[name] = {"mean": statistics.fmean(values), "min": min(values), "max": max(values), "n": len(values)}
    return rows


def table(per_seed: dict[int, dict]) -> str:
    def fmt(value: float | None, name: str) -> str:
        return "-" if value is None else f"{value:.0f}" if name.endswith(("gained", "lost")) else f"{value:.3f}"

    def gained_lost(f: dict, prefix: str) -> str:
        return f"{fmt(f[prefix + '_gained'], 'gained')} / {fmt(f[prefix + '_lost'], 'lost')}"

    lines = [f"| stage | figure | mean | min | max | seeds |", "|---|---|---|---|---|---|"]
    for name, row in summary(per_seed).items():
        stage, label = FIGURES[name]
        mean = f"{row['mean']:.1f}" if name.endswith(("gained", "lost")) else f"{row['mean']:.3f}"
        lines.append(f"| {stage} | {label} | {mean} | {fmt(row['min'], name)} | {fmt(row['max'], name)} | "
                     f"{row['n']} |")
    lines += ["", "| seed | SFT held-out EM | DPO held-out EM | held-out gained / lost | SFT validation EM | "
                  "DPO validation EM | validation gained / lost | run (s) |", "|---|---|---|---|---|---|---|---|"]
    for seed, f in per_seed.items():
        lines.append(f"| {seed} | {fmt(f['sft_heldout_em'], '')} | {fmt(f['dpo_heldout_em'], '')} | "
                     f"{gained_lost(f, 'dpo_heldout')} | {fmt(f['sft_validation_em'], '')} | "
                     f"{fmt(f['dpo_validation_em'], '')} | {gained_lost(f, 'dpo_validation')} | "
                     f"{f.get('seconds') or '-'} |")
    held = [f for f in per_seed.values() if f["dpo_heldout_gained"] is not None]
    kept = sum(f["dpo_heldout_gained"] >= f["dpo_heldout_lost"] for f in held)
    lines += ["", f"DPO gained at least as many held-out answers as it lost on {kept} of {len(held)} seeds."]
    rl = {seed: f for seed, f in per_seed.items() if f.get("grpo_heldout_gained") is not None}
    if rl:
        lines += ["", "| seed | DPO -> GRPO validation EM | gained / lost | DPO -> GRPO held-out EM | gained / lost | "
                      "refusals | mean answer words |", "|---|---|---|---|---|---|---|"]
        for seed, f in rl.items():
            before_after = [f"{fmt(f['dpo_' + name], '')} -> {fmt(f['grpo_' + name], '')}"
                            for name in ("validation_em", "heldout_em", "heldout_refusals")]
            lines.append(f"| {seed} | {before_after[0]} | {gained_lost(f, 'grpo_validation')} | {before_after[1]} | "
                         f"{gained_lost(f, 'grpo_heldout')} | {before_after[2]} | "
                         f"{f['dpo_heldout_words']:.2f} -> {f['grpo_heldout_words']:.2f} |")
        goal = sum(f["grpo_heldout_gained"] > 0 and f["grpo_heldout_lost"] == 0 for f in rl.values())
        lines += ["", f"GRPO's goal (a held-out gain with no held-out answer lost that DPO had right) held on {goal} "
                      f"of {len(rl)} seeds."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--out-root", type=Path, default=REPO_ROOT / "out" / "bench-demo-seeds",
                        help="one run directory per seed (seedN) and its log (seedN.log)")
    parser.add_argument("--from", dest="start_stage", type=int, default=0,
                        help="rerun from this stage (e.g. 85) on the seeds' earlier output")
    parser.add_argument("--collect", action="store_true", help="run nothing: read the runs in --out-root")
    parser.add_argument("--jobs", type=int, default=1, help="seeds run side by side")
    parser.add_argument("--resume", action="store_true", help="training stages continue from their checkpoints")
    parser.add_argument("--output", type=Path, default=REPO_ROOT / "benchmarks" / "results" / "demo_seeds.json")
    args = parser.parse_args(argv)
    args.out_root.mkdir(parents=True, exist_ok=True)
    def one_seed(seed: int) -> dict:
        out = args.out_root / f"seed{seed}"
        seconds = None
        if not args.collect:
            print(f"seed {seed}: runs/demo.sh --seed {seed} --skip-serve --skip-export --from {args.start_stage} "
                  f"-> {out}", flush=True)
            seconds = round(run_demo(seed, out, args.start_stage, args.resume))
        figures = {**demo_report.figures(out), "seconds": seconds}
        print(json.dumps({"seed": seed, **figures}), flush=True)
        return figures

    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        per_seed = dict(zip(args.seeds, pool.map(one_seed, args.seeds)))
    text = table(per_seed)
    print("\n" + text)
    record = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "machine": f"{platform.node()} {platform.machine()}, {os.cpu_count()} CPUs, "
                         f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}",
              "command": " ".join(shlex.quote(a) for a in [sys.executable, *sys.argv]),
              "per_seed": per_seed, "summary": summary(per_seed), "table": text}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(record, indent=2) + "\n")
    print(f"\nwrote {args.output}")


if __name__ == "__main__":
    main()
