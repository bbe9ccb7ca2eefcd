"""``lumi <verb>``: one command line for every stage (the numbered scripts in ``scripts/`` call into it).

Each verb lives in its own module, imported only when used, which exposes ``configure_parser(parser)`` and
``run(args) -> int``. Flags are kebab-case; the underscore spelling (``--output_dir``) is accepted too.
"""

from __future__ import annotations

import argparse
import importlib
import signal
import sys
from typing import Any, Callable, Mapping, Sequence

from lumi import __version__
from lumi.core.errors import LumiError, Terminated
from lumi.core.files import storage_error
from lumi.core.stage_args import setup_logging

# verb -> (module, one-line help). Order is pipeline order.
VERBS: dict[str, tuple[str, str]] = {
    "corpus": ("lumi.stages.corpus",
               "10: prepare a pretraining corpus (local files, hub streams, synthetic world; filters, dedup, budgets)"),
    "tokenizer": ("lumi.stages.tokenizer", "20: train the SentencePiece tokenizer and export it for transformers"),
    "pack": ("lumi.stages.pack", "30: tokenize and pack a corpus into fixed-length training rows"),
    "pretrain": ("lumi.stages.pretrain", "40: pretrain the LLaMA-style model on packed data (checkpoints, resume)"),
    "evaluate": ("lumi.stages.evaluate",
                 "50/80/95: evaluate a checkpoint (perplexity, zero-shot tasks, generation checks)"),
    "sft-corpus": ("lumi.stages.sft_corpus",
                   "60: instruction/chat datasets -> filtered, tokenized, packed SFT rows with assistant-only masks"),
    "sft": ("lumi.stages.sft", "70: supervised fine-tuning (LoRA or full) with the assistant-only loss"),
    "dpo-corpus": ("lumi.stages.dpo_corpus",
                   "85: preference datasets -> filtered, tokenized chosen/rejected pairs with answer-only masks"),
    "dpo": ("lumi.stages.dpo", "90: preference tuning (DPO sigmoid, IPO, hinge; LoRA or full) from an SFT model"),
    "grpo": ("lumi.stages.grpo", "97: RL with verifiable rewards (GRPO; rollouts on Lumi's generation engine) from an "
                                 "SFT or DPO model"),
    "merge-lora": ("lumi.stages.merge_lora", "fold a LoRA adapter into its base model (a plain save_pretrained dir)"),
    "chat": ("lumi.stages.chat", "100: chat with a checkpoint in the terminal (raw completion for a base model)"),
    "serve": ("lumi.stages.serve", "100: serve a checkpoint: OpenAI-compatible API and web chat page (uvicorn)"),
    "config": ("lumi.stages.configs", "list the shipped configs or print one to copy and edit"),
    "export": ("lumi.stages.export",
               "105: a final model as GGUF for llama.cpp and Ollama (+ Modelfile, model card), verified"),
}


def normalize_flag_spelling(argv: Sequence[str]) -> list[str]:
    """Accept ``--output_dir`` for ``--output-dir``: rewrite underscores in option names, never in values."""
    out = []
    for token in argv:
        if token.startswith("--") and len(token) > 2:
            name, sep, value = token.partition("=")
            token = name.replace("_", "-") + sep + value
        out.append(token)
    return out


def build_parser(prog: str = "lumi") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description="Lumi-Lab: raw text to a served LLaMA-style chat model.")
    parser.add_argument("--version", action="version", version=f"lumi-lab {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="verb", metavar="VERB", required=True)
    for verb, (module_name, help_text) in VERBS.items():
        # Import lazily: each verb's parser is built only when it is the one asked for (or for --help).
        # A numbered script calls main(["verb", ...], prog=script_name): its help shows the script's own name.
        subparser = sub.add_parser(verb, help=help_text, description=help_text,
                                   prog=f"{prog} {verb}" if prog == "lumi" else prog)
        subparser.set_defaults(_module=module_name)
    return parser


def parse_args(argv: Sequence[str], prog: str = "lumi",
               defaults: Mapping[str, Any] | None = None) -> argparse.Namespace:
    """The parsed flags of one verb's command line, its parser built from its stage module (what tests of a stage's
    flags use instead of importing the stage)."""
    argv = normalize_flag_spelling(argv)
    parser = build_parser(prog)
    sub_action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    verb = next((t for t in argv if not t.startswith("-")), None)
    if verb in VERBS:
        importlib.import_module(VERBS[verb][0]).configure_parser(sub_action.choices[verb])
        sub_action.choices[verb].set_defaults(**(defaults or {}))
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None, prog: str = "lumi", defaults: Mapping[str, Any] | None = None) -> int:
    """Run one verb. A numbered script passes ``prog`` (its own name in ``--help``) and may pass ``defaults`` for
    the verb's flags (``scripts/80_evaluate_sft.py``: the SFT evaluation config), shown as such in ``--help``."""
    args = parse_args(sys.argv[1:] if argv is None else argv, prog, defaults)
    setup_logging(args.verbose)
    return run_guarded(importlib.import_module(args._module).run, args)


def _terminate(signum: int, frame: Any) -> None:
    raise Terminated(signum)


def run_guarded(run: Callable[[argparse.Namespace], int | None], args: argparse.Namespace) -> int:
    """Run a verb so that every failure the user can act on ends in one line on stderr: LumiError and storage
    faults (disk full, read-only, ...) exit 2; SIGINT exits 130 and SIGTERM 143 after the same unwinding (staged
    outputs removed, locks released). Anything else is a bug and keeps its traceback."""
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        return int(run(args) or 0)
    except LumiError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except Terminated as exc:
        print(f"stopped by {signal.Signals(exc.signum).name}", file=sys.stderr)
        return 128 + exc.signum
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        # A write outside a staged output (metrics.jsonl, the corpus build) carries no file name: name the output.
        error = storage_error(exc, getattr(args, "output_dir", None))
        if error is None:
            raise
        print(f"error: {error}", file=sys.stderr)
        return error.exit_code
    finally:
        signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
