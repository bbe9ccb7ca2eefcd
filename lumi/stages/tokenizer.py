"""Stage 20 (``lumi tokenizer``): train the SentencePiece tokenizer on a corpus and export it for transformers. The
training, export and validation are ``lumi/data/tokenizer_training.py``, the directory format
``lumi/formats/tokenizer.py``; this module is the command line."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from lumi.core.config import CONFIG_DIR
from lumi.core.stage_args import add_common_arguments, stage_config
from lumi.data.tokenizer_training import TokenizerConfig, train_tokenizer

logger = logging.getLogger(__name__)


def configure_parser(parser: argparse.ArgumentParser) -> None:
    add_common_arguments(parser, CONFIG_DIR / "pretrain" / "tokenizer" / "spm32k.json", default_output="tokenizer")
    parser.add_argument("--corpus-dir", type=Path, required=True, help="a stage-10 corpus directory")
    parser.add_argument("--vocab-size", type=int, help="vocabulary size (overrides the config)")


def run(args: argparse.Namespace) -> int:
    config = stage_config(args, TokenizerConfig, {"vocab_size": args.vocab_size})
    report = train_tokenizer(args.corpus_dir, args.output_dir, config, force=args.force)
    logger.info("tokenizer written to %s: %d pieces, %.3f bytes/token, unk rate %.2g, round trip %.4f, "
                "transformers id agreement %.4f on %d held-out texts", args.output_dir, config.vocab_size,
                report["bytes_per_token"], report["unk_rate"], report["roundtrip_exact_fraction"],
                report["hf_id_agreement_fraction"], report["documents"])
    return 0
