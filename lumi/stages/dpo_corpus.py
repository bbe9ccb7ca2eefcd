"""``lumi dpo-corpus`` (stage 85): build a DPO data dir from a config (``config/dpo/datasets/*.json``) or, config-free,
from local files (``--input``; JSON or JSON lines, optionally gzipped; each file's format detected from its records
unless ``--format``)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from lumi.core.config import load_config
from lumi.core.errors import LumiError
from lumi.core.files import check_output_dir, output_lock
from lumi.core.stage_args import add_common_arguments
from lumi.data.chat import TEMPLATES
from lumi.data.preference import DPO_LENGTH_FIXES, PREFERENCE_FORMATS, PreferenceCorpusConfig, build_preference_corpus
from lumi.data.sft_corpus import fitting_seq_len, input_sources, too_long_note

log = logging.getLogger(__name__)


def configure_parser(parser: argparse.ArgumentParser) -> None:
    add_common_arguments(parser, None, default_output="dpo_data")
    parser.add_argument("--tokenizer-dir", type=Path, required=True,
                        help="a stage-20 tokenizer dir or a checkpoint dir (its tokenizer files): the SFT model's")
    parser.add_argument("--input", type=Path, nargs="+",
                        help="local JSON/JSONL files, optionally .gz, each read in its own format (instead of "
                             "--config)")
    parser.add_argument("--format", choices=("auto", *PREFERENCE_FORMATS), default="auto",
                        help="record format of --input")
    parser.add_argument("--template", choices=tuple(TEMPLATES), help="chat template (overrides the config)")
    parser.add_argument("--seq-len", type=int, help="longest prompt + answer in tokens (overrides the config)")


def run(args: argparse.Namespace) -> int:
    if (args.config is None) == (args.input is None):
        raise LumiError("give either --config FILE or --input FILE [FILE ...]")
    flags = {"template": args.template, "seq_len": args.seq_len}
    if args.input is not None:
        flags["sources"] = input_sources(args.input, args.format)
        if args.seq_len is None:
            default = PreferenceCorpusConfig.model_fields["seq_len"].default
            flags["seq_len"] = fitting_seq_len(args.tokenizer_dir, default)
    config = load_config(PreferenceCorpusConfig, args.config, args.overrides, flags)
    with output_lock(args.output_dir, reentrant=True) as final:  # the whole run: a second one is refused at once
        check_output_dir(final, args.force)  # and an existing output before the conversations are read
        manifest = build_preference_corpus(config, args.tokenizer_dir, args.output_dir, force=args.force)
    for name, source in manifest["sources"].items():
        log.info("%s (%s): read %d, kept %d (%d prompts cut), dropped %s", name, source["format"], source["read"],
                 source["kept"], source["prompt_cut"], source["dropped"] or "none")
        for reason, examples in source["dropped_examples"].items():
            log.info("  %s, e.g. %s", reason, "; ".join(examples))
        note = too_long_note(name, source, manifest["seq_len"], DPO_LENGTH_FIXES)
        if note:
            log.warning("%s", note)
    train, val = manifest["splits"]["train"], manifest["splits"]["val"]
    log.info("wrote %s: train %d pairs, val %d pairs (%s template)", args.output_dir, train["pairs"], val["pairs"],
             manifest["template"])
    return 0
