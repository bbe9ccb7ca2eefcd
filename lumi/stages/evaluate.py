"""``lumi evaluate``: measure a checkpoint directory and write ``evaluation_results.json`` + ``report.md``.

The same command (and config schema) evaluates checkpoints after pretraining, SFT and DPO, so their numbers compare;
``--compare PREVIOUS_RESULTS`` puts an earlier run's numbers beside this one's. The results schema is documented in
``docs/EVALUATION.md``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from lumi.core.errors import LumiError
from lumi.core.files import atomic_write_json, staged_output_dir
from lumi.core.stage_args import add_common_arguments, stage_config
from lumi.eval.config import PRETRAIN_CONFIG, EvaluationConfig
from lumi.eval.evaluate import compared_known_facts, evaluate_model
from lumi.eval.report import RESULTS_FILE, compare_results, console_summary, load_previous_results, write_report


def configure_parser(parser: argparse.ArgumentParser) -> None:
    add_common_arguments(parser, default_config=PRETRAIN_CONFIG, default_output="evaluation")
    parser.add_argument("--model-path", type=Path, required=True,
                        help="checkpoint directory (save_pretrained model + tokenizer files), or a LoRA adapter "
                             "dir (evaluated merged into the base it records)")
    parser.add_argument("--compare", type=Path, metavar="PREVIOUS_RESULTS",
                        help=f"an earlier {RESULTS_FILE} (or the directory holding it) to compare against")
    parser.add_argument("--max-samples", type=int, metavar="N", help="cap every task at N seeded items")
    parser.add_argument("--device", help="torch device (default: the config's, 'auto' = cuda if available)")


def run(args: argparse.Namespace) -> int:
    config = stage_config(args, EvaluationConfig, {"device": args.device})
    if args.max_samples is not None:
        if args.max_samples < 1:
            raise LumiError(f"--max-samples must be >= 1, got {args.max_samples}")
        for task in config.tasks:
            task.max_samples = min(task.max_samples or args.max_samples, args.max_samples)
    previous = load_previous_results(args.compare) if args.compare else None
    with staged_output_dir(args.output_dir, args.force) as staging:
        results = evaluate_model(config, args.model_path, staging, compared_known_facts(args.compare))
        if previous is not None:
            results["comparison"] = compare_results(results, previous, str(args.compare))
        atomic_write_json(staging / RESULTS_FILE, results)
        write_report(results, args.model_path, staging)
    print(console_summary(results))
    print(f"evaluation -> {args.output_dir}/{RESULTS_FILE}, {args.output_dir}/report.md")
    return 0
