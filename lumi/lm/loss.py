"""The causal-LM loss used by training and evaluation, with packed documents kept apart.

A packed row is ``...doc1 EOS | BOS doc2 EOS | BOS doc3...``. Position ids restart at 0 at every BOS; transformers
(``masking_utils.find_packed_sequence_indices``) turns restarting position ids into a block-diagonal causal mask for
the sdpa, eager and flex backends, so no token attends to another document. That detection only runs when no 2D
attention mask and no KV cache is passed, hence ``attention_mask=None`` and ``use_cache=False`` below. Flash-attention
takes the boundaries from the position ids as varlen sequence starts, but only for a batch of one row
(``modeling_flash_attention_utils._is_packed_sequence``), so for it the rows are laid end to end first.

Labels are the inputs shifted **exactly once** (logits at t predict token t+1). Targets that are PAD (padding) or BOS
(a document start is given, not predicted -- with document masking it is not even predictable) are not scored:
they, and the last position of each row, get ``IGNORE_INDEX``.

The loss is computed from the backbone's hidden states rather than ``model(..., labels=...)``: transformers upcasts the
full (batch, seq, vocab) logits to fp32, while here the output projection and cross-entropy run over chunks of
``chunk_tokens`` positions (``lumi.lm.linear_cross_entropy``), so at most one chunk of logits is alive at a
time and the projection runs no more often than in a plain forward + backward. The two agree (a test checks it).
"""

from __future__ import annotations

import torch
from transformers import LlamaForCausalLM

from lumi.core.special_tokens import BOS_ID, PAD_ID
from lumi.lm.linear_cross_entropy import DEFAULT_CHUNK_TOKENS, IGNORE_INDEX, linear_cross_entropy

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


def next_token_targets(input_ids: torch.LongTensor) -> torch.LongTensor:
    """(batch, seq) targets: position t predicts input t+1 -- the one and only shift; the last position of a row
    and unscored targets are ``IGNORE_INDEX``."""
    targets = torch.full_like(input_ids, IGNORE_INDEX)
    targets[:, :-1] = input_ids[:, 1:].masked_fill(~scored_target_mask(input_ids), IGNORE_INDEX)
    return targets


def count_scored_tokens(input_ids: torch.LongTensor) -> int:
    """How many targets a batch contributes, known before the forward pass (to normalise gradient accumulation)."""
    return int(scored_target_mask(input_ids).sum())


def packs_only_single_rows(model: LlamaForCausalLM) -> bool:
    """Whether the attention backend finds packed documents only in a batch of one row (flash-attention)."""
    return "flash" in model.config._attn_implementation


def summed_nats(model: LlamaForCausalLM, input_ids: torch.LongTensor, *, document_masking: bool = True,
                chunk_tokens: int = DEFAULT_CHUNK_TOKENS, compile_chunks: bool = False,
                targets: torch.LongTensor | None = None) -> torch.Tensor:
    """Summed next-token cross-entropy (fp32 nats) over the scored targets of a batch.

    Never waits for the device: no shape depends on the data (unscored positions are ignored, not removed), so the
    trainer can queue the next step before this one finishes. ``document_masking=False`` lets packed documents
    attend to each other (plain causal mask, contiguous positions). ``compile_chunks`` runs the per-chunk loss and
    gradient math through ``torch.compile`` (the trainer's ``compile``). ``targets`` (batch, seq), already shifted,
    replace the next-token targets (SFT scores only the assistant tokens: ``lumi.data.chat.loss_targets``).
    """
    position_ids = position_ids_from_bos(input_ids) if document_masking else None
    if position_ids is not None and packs_only_single_rows(model):
        # One long row: every row starts at position 0, so rows stay apart as well as documents.
        hidden = model.model(input_ids=input_ids.reshape(1, -1), position_ids=position_ids.reshape(1, -1),
                             attention_mask=None, use_cache=False).last_hidden_state
    else:
        hidden = model.model(input_ids=input_ids, position_ids=position_ids, attention_mask=None,
                             use_cache=False).last_hidden_state
    return linear_cross_entropy(hidden.reshape(-1, hidden.shape[-1]), model.get_output_embeddings().weight,
                                (next_token_targets(input_ids) if targets is None else targets).reshape(-1),
                                chunk_tokens=chunk_tokens, compiled=compile_chunks)

