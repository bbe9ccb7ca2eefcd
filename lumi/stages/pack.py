"""Stage 30 (``lumi pack``): tokenize a corpus directory and pack it into fixed-length rows. The packing itself is
``lumi/data/packing.py``, the format ``lumi/formats/packed.py``; this module is the command line."""

from __future__ import annotations

import argparse
from pathlib import Path

from lumi.core.config import CONFIG_DIR
from lumi.core.stage_args import add_common_arguments, default_output_dir, stage_config
from lumi.data.packing import PackingConfig, pack_corpus
from lumi.formats.tokenizer import META as TOKENIZER_META

DEFAULT_CONFIG = CONFIG_DIR / "pretrain" / "packing" / "default.json"


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--corpus-dir", type=Path, default=default_output_dir("corpus"),
                        help="corpus directory from stage 10 (default: data/corpus)")
    parser.add_argument("--tokenizer-dir", type=Path, default=default_output_dir("tokenizer"),
                        help="tokenizer directory from stage 20 (default: data/tokenizer)")
    parser.add_argument("--seq-len", type=int, help="tokens per row (overrides the config's seq_len)")
    parser.add_argument("--skip-tokenizer-check", action="store_true",
                        help=f"do not verify the tokenizer files against the hashes in {TOKENIZER_META}")
    add_common_arguments(parser, DEFAULT_CONFIG, default_output="packed")


def run(args: argparse.Namespace) -> int:
    config = stage_config(args, PackingConfig, {"seq_len": args.seq_len})
    manifest = pack_corpus(args.corpus_dir, args.tokenizer_dir, args.output_dir, config, force=args.force,
                           verify_tokenizer=not args.skip_tokenizer_check)
    train = manifest["splits"]["train"]
    print(f"packed {train['rows']} train rows x {manifest['seq_len']} tokens "
          f"(+{manifest['splits']['val']['rows']} val rows) into {args.output_dir}")
    return 0
