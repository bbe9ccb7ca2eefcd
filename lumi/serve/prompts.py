"""Prompt token ids for the two ways of asking: a chat (messages through the checkpoint's chat template) and a raw
completion (text as it is, BOS first as in the pretraining data).

Chat ids are ``apply_chat_template(messages, add_generation_prompt=True)`` — the ids the SFT stage verifies its
training tokens against, and what vLLM / SGLang compute from the same tokenizer files: the template alone decides BOS
and the turn markers.
"""

from __future__ import annotations

from transformers import PreTrainedTokenizerBase

from lumi.core.errors import LumiError


def has_chat_template(tokenizer: PreTrainedTokenizerBase) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def completion_ids(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    return tokenizer.encode(text)


def chat_ids(tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, str]]) -> list[int]:
    if not has_chat_template(tokenizer):
        raise LumiError("this checkpoint's tokenizer has no chat template (a pretrained base model): use "
                        "completions (/v1/completions, or `lumi chat`, which switches to raw completion mode)")
    try:
        encoded = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=True)
    except Exception as exc:  # jinja2 errors (e.g. a template that rejects a role) are the request's fault
        raise LumiError(f"the chat template could not render these messages: {exc}") from None
    return list(encoded["input_ids"])


def fit_history(tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, str]],
                budget: int) -> tuple[list[dict[str, str]], list[int], int]:
    """Drop the oldest non-system turns until the rendered chat fits ``budget`` tokens.

    Returns ``(kept messages, their prompt ids, how many messages were dropped)``; a system message is kept. Raises
    when even the last message alone does not fit."""
    system = [m for m in messages[:1] if m["role"] == "system"]
    turns = messages[len(system):]
    for dropped in range(len(turns)):
        kept = system + turns[dropped:]
        if kept[len(system)]["role"] != "user" and dropped < len(turns) - 1:
            continue  # a conversation restarts with a user turn
        ids = chat_ids(tokenizer, kept)
        if len(ids) <= budget:
            return kept, ids, dropped
    raise LumiError(f"the last message alone is longer than the {budget} tokens the context leaves: shorten it")
