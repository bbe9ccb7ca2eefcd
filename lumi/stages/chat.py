"""``lumi chat`` (stage 100, interactive): a terminal chat with a checkpoint (lumi/serve/chat.py)."""

from __future__ import annotations

import argparse
import sys

from lumi.serve.chat import ChatSession, chat_loop, writer
from lumi.serve.options import add_model_arguments, engine_from_args


def configure_parser(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser)
    parser.add_argument("--system", help="system prompt (chat mode)")
    parser.add_argument("--raw", action="store_true",
                        help="raw completion mode even when the tokenizer has a chat template")


def run(args: argparse.Namespace) -> int:
    with engine_from_args(args) as engine:
        return chat_loop(ChatSession(engine, writer(sys.stdout), args.system, True if args.raw else None))
