"""The causal-LM loss used by training and evaluation, with packed documents kept apart.

A packed row is ``...doc1 EOS | BOS doc2 EOS | BOS doc3...``. Position ids restart at 0 at every BOS; transformers
(``masking_utils.find_packed_sequence_indices``) turns restarting position ids into a block-diagonal causal mask for
the sdpa, eager and flex backends, so no token attends to another document. That detection only runs when no 2D
attention mask and no KV cache is passed, hence ``attention_mask=None`` and ``use_cache=False`` below. Flash-attention
takes the boundaries from the position ids as varlen sequence starts, but only for a batch of one row
(``modeling_flash_attention_utils._is_packed_sequence``), so for it the rows are laid end to end first.

Labels are the inputs shifted **exactly once** (logits at t predict token t+1). Targets that are PAD (padding) or BOS
(a document start is given, not predicted -- with document masking it is not even predictable) are not scored.

The loss is computed from the backbone's hidden states rather than ``model(..., labels=...)``: transformers upcasts the
full (batch, seq, vocab) logits to fp32, while here the output projection and cross-entropy run over chunks of
``chunk_tokens`` scored positions (``lumi.train.linear_cross_entropy``), so at most one chunk of logits is alive at a
time and the projection runs no more often than in a plain forward + backward. The two agree (a test checks it).
"""

from __future__ import annotations

from typing import Literal

import torch
from transformers import LlamaForCausalLM

from lumi.special_tokens import BOS_ID, PAD_ID
from lumi.train.linear_cross_entropy import DEFAULT_CHUNK_TOKENS, linear_cross_entropy

UNSCORED_TARGETS = (PAD_ID, BOS_ID)


def position_ids_from_bos(input_ids: torch.LongTensor, bos_id: int = BOS_ID) -> torch.LongTensor:
    """Positions that restart at 0 at every BOS; tokens before a row's first BOS (a document continued from the
    previous row) count from 0 at the row start."""
    batch, length = input_ids.shape
    index = torch.arange(length, device=input_ids.device).expand(batch, length)
    starts = torch.where(input_ids == bos_id, index, torch.zeros_like(index))
    return index - torch.cummax(starts, dim=1).values


def scored_target_mask(input_ids: torch.LongTensor) -> torch.BoolTensor:
    """(batch, seq-1) mask of the next-token targets that count towards the loss."""
    targets = input_ids[:, 1:]
    mask = torch.ones_like(targets, dtype=torch.bool)
    for token_id in UNSCORED_TARGETS:
        mask &= targets != token_id
    return mask


def count_scored_tokens(input_ids: torch.LongTensor) -> int:
    """How many targets a batch contributes, known before the forward pass (to normalise gradient accumulation)."""
    return int(scored_target_mask(input_ids).sum())


def packs_only_single_rows(model: LlamaForCausalLM) -> bool:
    """Whether the attention backend finds packed documents only in a batch of one row (flash-attention)."""
    return "flash" in model.config._attn_implementation


def causal_lm_loss(model: LlamaForCausalLM, input_ids: torch.LongTensor, *, document_masking: bool = True,
                   reduction: Literal["mean", "sum"] = "mean", chunk_tokens: int = DEFAULT_CHUNK_TOKENS,
                   compile_chunks: bool = False):
    """Next-token cross-entropy in nats.

    ``reduction="mean"`` returns a scalar tensor; ``"sum"`` returns ``(sum_nats, num_scored_tokens)`` so callers can
    average exactly over many batches (and normalise gradient accumulation by the true token count).
    ``document_masking=False`` lets packed documents attend to each other (plain causal mask, contiguous positions).
    ``compile_chunks`` runs the per-chunk loss and gradient math through ``torch.compile`` (the trainer's ``compile``).
    """
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
    position_ids = position_ids_from_bos(input_ids) if document_masking else None
    if position_ids is not None and packs_only_single_rows(model):
        # One long row: every row starts at position 0, so rows stay apart as well as documents.
        hidden = model.model(input_ids=input_ids.reshape(1, -1), position_ids=position_ids.reshape(1, -1),
                             attention_mask=None, use_cache=False).last_hidden_state.reshape(*input_ids.shape, -1)
    else:
        hidden = model.model(input_ids=input_ids, position_ids=position_ids, attention_mask=None,
                             use_cache=False).last_hidden_state
    mask = scored_target_mask(input_ids)
    hidden = hidden[:, :-1][mask]  # hidden state at t predicts input t+1: the one and only shift
    targets = input_ids[:, 1:][mask]
    total = linear_cross_entropy(hidden, model.get_output_embeddings().weight, targets, chunk_tokens=chunk_tokens,
                                 compiled=compile_chunks)
    count = int(targets.numel())
    if reduction == "sum":
        return total, count
    if count == 0:
        raise ValueError("causal_lm_loss: the batch has no scored targets (only PAD/BOS after the first token)")
    return total / count
