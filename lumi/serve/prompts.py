"""Prompt token ids for the two ways of asking: a chat (messages through the checkpoint's chat template) and a raw
completion (text as it is, BOS first as in the pretraining data).

Chat ids are ``apply_chat_template(messages, add_generation_prompt=True, sanitize_control_tokens=True)`` — the ids
the SFT stage verifies its training tokens against: the template alone decides BOS and the turn markers, and marker
text inside a message (``<|im_end|>``, ``</s>``) is encoded as text, so untrusted content can never close a turn or
open one. The API, ``lumi chat`` and the web page (which calls the API) all encode through ``chat_ids``.

Completion prompts are raw text: by default marker text in them is parsed as control tokens (as llama-server and vLLM
do, so a client can write a whole ChatML prompt); ``parse_special=False`` encodes it as text instead.
"""

from __future__ import annotations

from transformers import PreTrainedTokenizerBase

from lumi.core.errors import LumiError


def has_chat_template(tokenizer: PreTrainedTokenizerBase) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def completion_ids(tokenizer: PreTrainedTokenizerBase, text: str, parse_special: bool = True) -> list[int]:
    if parse_special:
        return tokenizer.encode(text)
    # BOS as encode() adds it, then the text with every added token (markers, BOS/EOS text) split into plain pieces
    bos = [tokenizer.bos_token_id] if tokenizer.encode("") == [tokenizer.bos_token_id] else []
    return bos + tokenizer._encode_without_added_tokens(text)


def chat_ids(tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, str]]) -> list[int]:
    if not has_chat_template(tokenizer):
        raise LumiError("this checkpoint's tokenizer has no chat template (a pretrained base model): use "
                        "completions (/v1/completions, or `lumi chat`, which switches to raw completion mode)")
    try:
        encoded = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=True,
                                                sanitize_control_tokens=True)
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
