"""Tiny checkpoints for the serving tests: the evaluator's tiny model + the project tokenizer, optionally made the
project's chat tokenizer (ChatML markers as special tokens, the Jinja template the SFT stage writes)."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Iterator

from eval_helpers import make_tiny_model_dir, write_tokenizer

from lumi.cli import parse_args
from lumi.data.chat import chat_tokenizer, get_template, save_chat_tokenizer
from lumi.generation.engine import Engine
from lumi.serve.api import ServerSettings, create_app
from lumi.serve.checkpoint import load_for_serving
from lumi.serve.engine_process import EngineProcess
from lumi.serve.server import running_server


def make_serving_dirs(root: Path, max_seq_len: int = 128) -> dict[str, Path]:
    """``{"base": dir without chat template, "chat": same weights with the SFT stage's chat tokenizer}``."""
    tokenizer_dir = write_tokenizer(root / "tokenizer")
    base = make_tiny_model_dir(root / "base", tokenizer_dir, max_seq_len=max_seq_len)
    chat = make_tiny_model_dir(root / "chat", tokenizer_dir, max_seq_len=max_seq_len)
    template = get_template("chatml")
    save_chat_tokenizer(chat_tokenizer(tokenizer_dir, template), template, chat, tokenizer_dir)
    (chat / "tokenizer_meta.json").unlink()  # its tokenizer files are no longer stage 20's, as in an SFT checkpoint
    return {"base": base, "chat": chat}


@contextlib.contextmanager
def serving(root: Path, settings: ServerSettings, max_seq_len: int = 128, in_process: bool = True,
            **engine_options: Any) -> Iterator[dict[str, Any]]:
    """``lumi serve``'s app on a loopback port over the tiny chat model of ``make_serving_dirs(root)``: its url,
    engine, tokenizer, model (loaded here in both cases) and dirs. ``in_process``: the engine in a thread of this
    process (``load_for_serving``, ``Engine(**engine_options)``), else as ``lumi serve`` runs it, in a process of
    its own (``EngineProcess`` over the same flags)."""
    dirs = make_serving_dirs(root, max_seq_len=max_seq_len)
    model, tokenizer = load_for_serving(dirs["chat"], device="cpu")
    if in_process:
        engine = Engine(model, tokenizer, **engine_options)
    else:
        flags = [f"--{name.replace('_', '-')}={value}" for name, value in engine_options.items()]
        engine = EngineProcess(parse_args(["serve", "--model-path", str(dirs["chat"]), "--device", "cpu",
                                           "--threads", "1", *flags]))
    with engine:
        with running_server(create_app(engine, engine.tokenizer, settings)) as url:
            yield {"url": url, "engine": engine, "tokenizer": engine.tokenizer, "model": model, "dirs": dirs}
