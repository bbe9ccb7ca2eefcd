"""Tiny checkpoints for the serving tests: the evaluator's tiny model + the project tokenizer, optionally made the
project's chat tokenizer (ChatML markers as special tokens, the Jinja template the SFT stage writes)."""

from __future__ import annotations

from pathlib import Path

from eval_helpers import make_tiny_model_dir, write_tokenizer

from lumi.data.chat import chat_tokenizer, get_template, save_chat_tokenizer


def make_serving_dirs(root: Path, max_seq_len: int = 128) -> dict[str, Path]:
    """``{"base": dir without chat template, "chat": same weights with the SFT stage's chat tokenizer}``."""
    tokenizer_dir = write_tokenizer(root / "tokenizer")
    base = make_tiny_model_dir(root / "base", tokenizer_dir, max_seq_len=max_seq_len)
    chat = make_tiny_model_dir(root / "chat", tokenizer_dir, max_seq_len=max_seq_len)
    template = get_template("chatml")
    save_chat_tokenizer(chat_tokenizer(tokenizer_dir, template), template, chat, tokenizer_dir)
    (chat / "tokenizer_meta.json").unlink()  # its tokenizer files are no longer stage 20's, as in an SFT checkpoint
    return {"base": base, "chat": chat}
