"""Tiny checkpoints for the serving tests: the evaluator's tiny model + the project tokenizer, optionally with a
ChatML chat template in the tokenizer files (as an SFT checkpoint carries one)."""

from __future__ import annotations

from pathlib import Path

from eval_helpers import make_tiny_model_dir, write_tokenizer
from transformers import AutoTokenizer

# ChatML, the layout of lumi.special_tokens (the SFT stage writes its own template; this one stands in for it).
CHATML_TEMPLATE = ("{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
                   "{{ message['content'] }}<|im_end|>\n{% endfor %}"
                   "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def make_serving_dirs(root: Path, max_seq_len: int = 128) -> dict[str, Path]:
    """``{"base": dir without chat template, "chat": same weights with the ChatML template}``."""
    tokenizer_dir = write_tokenizer(root / "tokenizer")
    base = make_tiny_model_dir(root / "base", tokenizer_dir, max_seq_len=max_seq_len)
    chat = make_tiny_model_dir(root / "chat", tokenizer_dir, max_seq_len=max_seq_len)
    tokenizer = AutoTokenizer.from_pretrained(chat)
    tokenizer.chat_template = CHATML_TEMPLATE
    tokenizer.save_pretrained(chat)
    (chat / "tokenizer_meta.json").unlink()  # its tokenizer files are no longer stage 20's, as in an SFT checkpoint
    return {"base": base, "chat": chat}
