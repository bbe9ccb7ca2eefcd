"""Batched log-likelihood of continuations given contexts: the scoring core of every zero-shot task.

Tokenization and truncation follow lm-evaluation-harness' ``HFLM`` for causal models exactly, so our scores match
``lm_eval --model hf`` on the same checkpoint:

* trailing spaces of the context move to the front of the continuation;
* ``context + continuation`` is encoded as one string (with the tokenizer's default special tokens, i.e. BOS for our
  tokenizer) and the context is encoded alone; the continuation tokens are the whole encoding past the length of
  the context encoding, and the model input is ``context_tokens + continuation_tokens``;
* an empty context is replaced by the BOS token;
* a sequence longer than the model's context window is **truncated from the left**: the last ``max_length + 1``
  tokens are kept and all but the last are fed to the model. The context loses its beginning first; only when the
  continuation alone exceeds the window does it lose its own first tokens (then fewer tokens are scored, and the
  score is flagged ``truncated``). Nothing raises.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from lumi.core.special_tokens import PAD_ID
from lumi.formats.model_io import model_device


@dataclass(frozen=True)
class ContinuationScore:
    logprob: float  # summed log-probability of the scored continuation tokens, in nats
    is_greedy: bool  # every scored continuation token is the model's argmax
    num_tokens: int  # continuation tokens scored
    truncated: bool  # the sequence was cut from the left to fit the context window


def encode(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    """Token ids with the tokenizer's special tokens, except that, as in lm-eval, no BOS is added to a text that
    already starts with the BOS string."""
    starts_with_bos = tokenizer.bos_token is not None and text.startswith(tokenizer.bos_token)
    return tokenizer.encode(text, add_special_tokens=not starts_with_bos)


def encode_pair(tokenizer: PreTrainedTokenizerBase, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """Token ids of (context, continuation) exactly as lm-eval's ``HFLM._encode_pair`` / ``loglikelihood`` make them."""
    prefix_id = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    if not context:
        continuation_ids = tokenizer.encode(continuation, add_special_tokens=False)
        if continuation_ids and continuation_ids[0] == prefix_id:
            return continuation_ids[:1], continuation_ids[1:]
        return [prefix_id], continuation_ids
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces:
        continuation = context[-n_spaces:] + continuation
        context = context[:-n_spaces]

    whole_ids = encode(tokenizer, context + continuation)
    context_ids = encode(tokenizer, context)
    return context_ids, whole_ids[len(context_ids):]


def padding_id(tokenizer: PreTrainedTokenizerBase) -> int:
    """The tokenizer's pad id, else the layout's (any id works: right padding is never attended to)."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else PAD_ID


def right_padded(rows: Sequence[Sequence[int]], pad_id: int) -> torch.LongTensor:
    """Token rows as one (rows, longest) batch, padded on the right: under causal attention no real position sees
    the padding after it, so the batch needs no attention mask."""
    batch = torch.full((len(rows), max(len(ids) for ids in rows)), pad_id, dtype=torch.long)
    for row, ids in enumerate(rows):
        batch[row, :len(ids)] = torch.tensor(ids, dtype=torch.long)
    return batch


@torch.no_grad()
def score_continuations(model: PreTrainedModel, pairs: Sequence[tuple[Sequence[int], Sequence[int]]],
                        max_length: int, batch_size: int = 8, pad_id: int = PAD_ID) -> list[ContinuationScore]:
    """Score each (context_ids, continuation_ids) pair; several pairs per forward pass.

    Pairs are processed longest first (so each batch pads little) and padded on the right (``right_padded``), so every
    row's scores equal an unbatched forward pass.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    device = model_device(model)
    windows: list[list[int]] = []
    for context_ids, continuation_ids in pairs:
        windows.append((list(context_ids) + list(continuation_ids))[-(max_length + 1):])
    order = sorted(range(len(pairs)), key=lambda i: -len(windows[i]))
    results: list[ContinuationScore | None] = [None] * len(pairs)
    for start in range(0, len(order), batch_size):
        chunk = order[start:start + batch_size]
        inputs = [windows[i][:-1] for i in chunk]
        width = max(len(ids) for ids in inputs)
        if width == 0:
            for i in chunk:
                results[i] = ContinuationScore(0.0, True, 0, False)
            continue
        batch = right_padded(inputs, pad_id)
        logits = model(input_ids=batch.to(device), use_cache=False).logits
        for row, i in enumerate(chunk):
            n_input = len(inputs[row])
            n_scored = min(len(pairs[i][1]), n_input)
            targets = torch.tensor(windows[i][-n_scored:] if n_scored else [], dtype=torch.long, device=device)
            logprobs = F.log_softmax(logits[row, n_input - n_scored:n_input].float(), dim=-1)
            token_logprobs = logprobs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
            results[i] = ContinuationScore(
                logprob=float(token_logprobs.sum()),
                is_greedy=bool((logprobs.argmax(-1) == targets).all()),
                num_tokens=n_scored,
                truncated=len(pairs[i][0]) + len(pairs[i][1]) > max_length + 1,
            )
    return results  # type: ignore[return-value]  # every slot is filled above
