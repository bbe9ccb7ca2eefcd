"""``lumi sft-corpus`` (stage 60): build an SFT data dir from a config (``config/sft/datasets/*.json``) or, config-free,
from local files (``--input``; the format detected from the records unless ``--format``)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from lumi.core.config import load_config
from lumi.data.chat import TEMPLATES
from lumi.data.readers import FORMATS
from lumi.data.sft_corpus import (SFT_LENGTH_FIXES, SFTCorpusConfig, build_sft_corpus, fitting_seq_len, input_sources,
                                  too_long_note)
from lumi.core.errors import LumiError
from lumi.core.files import check_output_dir, output_lock
from lumi.core.stage_args import add_common_arguments

log = logging.getLogger(__name__)


def configure_parser(parser: argparse.ArgumentParser) -> None:
    add_common_arguments(parser, None, default_output="sft_data")
    parser.add_argument("--tokenizer-dir", type=Path, required=True,
                        help="a stage-20 tokenizer dir or a checkpoint dir (its tokenizer files)")
    parser.add_argument("--input", type=Path, nargs="+",
                        help="local JSON/JSONL files, optionally .gz, each read in its own format (instead of "
                             "--config)")
    parser.add_argument("--format", choices=("auto", *FORMATS), default="auto", help="record format of --input")
    parser.add_argument("--template", choices=tuple(TEMPLATES), help="chat template (overrides the config)")
    parser.add_argument("--seq-len", type=int, help="row length in tokens (overrides the config)")


def run(args: argparse.Namespace) -> int:
    if (args.config is None) == (args.input is None):
        raise LumiError("give either --config FILE or --input FILE [FILE ...]")
    flags = {"template": args.template, "seq_len": args.seq_len}
    if args.input is not None:
        flags["sources"] = input_sources(args.input, args.format)
        if args.seq_len is None:
            flags["seq_len"] = fitting_seq_len(args.tokenizer_dir, SFTCorpusConfig.model_fields["seq_len"].default)
    config = load_config(SFTCorpusConfig, args.config, args.overrides, flags)
    with output_lock(args.output_dir, reentrant=True) as final:  # the whole run: a second one is refused at once
        check_output_dir(final, args.force)  # and an existing output before the conversations are read
        manifest = build_sft_corpus(config, args.tokenizer_dir, args.output_dir, force=args.force)
    for name, source in manifest["sources"].items():
        log.info("%s (%s): read %d, kept %d, dropped %s", name, source["format"], source["read"], source["kept"],
                 source["dropped"] or "none")
        for reason, examples in source["dropped_examples"].items():
            log.info("  %s, e.g. %s", reason, "; ".join(examples))
        note = too_long_note(name, source, manifest["seq_len"], SFT_LENGTH_FIXES)
        if note:
            log.warning("%s", note)
    train, val = manifest["splits"]["train"], manifest["splits"]["val"]
    log.info("wrote %s: train %d conversations in %d rows, val %d in %d rows (%s template, %.0f conversations/s)",
             args.output_dir, train["conversations"], train["rows"], val["conversations"], val["rows"],
             manifest["template"], manifest["conversations_per_second"])
    return 0
