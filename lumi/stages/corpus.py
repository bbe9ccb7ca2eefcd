"""Stage 10 (`lumi corpus`): read sources, clean, filter, deduplicate (exact + MinHash, across sources), apply
per-source token budgets, and write a corpus directory (see ``lumi.formats.corpus``).

The work runs on datatrove executors (``lumi.corpus.engine``): locally by default, on Slurm or Ray by setting
``executor.type`` in the config; docs/CORPUS.md describes the design and the cluster invocation. The config-free
form ``lumi corpus --input PATH...`` builds a one-source config with the format taken from each file's extension.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from lumi.core.errors import LumiError
from lumi.core.stage_args import add_common_arguments, stage_config
from lumi.corpus.analyze import analyze, format_analysis
from lumi.corpus.build import build_corpus, checked_sources
from lumi.corpus.config import CorpusConfig


def configure_parser(parser: argparse.ArgumentParser) -> None:
    add_common_arguments(parser, default_config=None, default_output="corpus")
    parser.add_argument("--input", nargs="+", type=Path, metavar="PATH",
                        help="config-free form: these files are the only source (format from the extension)")
    parser.add_argument("--txt-split", choices=["file", "line", "paragraph", "separator"], default="file",
                        help="with --input: how a .txt file splits into documents (default: one per file)")
    parser.add_argument("--txt-separator", default="<|endoftext|>", help="with --txt-split separator")
    parser.add_argument("--analyze-only", action="store_true",
                        help="estimate sizes and budgets from a sample of each source; write nothing")


def run(args: argparse.Namespace) -> int:
    if args.input:
        source = {"type": "local", "name": "input", "paths": [str(p) for p in args.input],
                  "txt_split": args.txt_split, "txt_separator": args.txt_separator}
        args.config = None
        config = stage_config(args, CorpusConfig, {"sources": [source]})
    elif args.config is None:
        raise LumiError("give either --config FILE (the demo's synthetic world: --config config/demo/corpus.json) "
                        "or --input FILE [FILE ...]")
    else:
        config = stage_config(args, CorpusConfig)
    if args.analyze_only:
        config = checked_sources(config)
        print(format_analysis(analyze(config)))
        return 0
    manifest = build_corpus(config, args.output_dir, args.force)
    if manifest is None:
        print(f"corpus: stages submitted to {config.executor.type}; the corpus is complete when "
              f"{args.output_dir}/manifest.json exists (rerun the same command to resume a failed run)")
        return 0
    realized = ", ".join(f"{name} {s['estimated_tokens']:,}" for name, s in manifest["sources"].items())
    print(f"corpus: {manifest['documents']:,} documents, {manifest['bytes'] / 1e6:.1f} MB, "
          f"~{manifest['estimated_tokens']:,} tokens ({realized}) -> {args.output_dir}")
    return 0
