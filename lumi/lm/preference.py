"""Preference math shared by DPO training (stage 90) and its evaluation (stage 95): the log-probability of an
answer given its prompt, and the DPO-family losses and implicit rewards built from policy and reference log-probs.

Log-probabilities sum over the answer's tokens only: position t predicts token t+1 (the one shift) and counts where
the answer mask marks token t+1 (the final assistant turn's content and ``<|im_end|>``); prompt and padding are
masked. Position ids restart at every BOS and no 2D attention mask is passed (as ``lumi.lm.loss`` does), so a pair
scores the same alone, right-padded in a batch, or packed with others into one row (a test checks all three).

The full (rows, seq, vocab) logits are built: the log-softmax needs every logit of a scored position, and DPO
batches are short; the chunked CE of ``lumi.lm.linear_cross_entropy`` returns a batch sum, not per-sequence sums.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F

from lumi.lm.loss import position_ids_from_bos

LossType = Literal["sigmoid", "ipo", "hinge"]
LOSS_TYPES: tuple[str, ...] = ("sigmoid", "ipo", "hinge")


def token_logps(model: Any, input_ids: torch.LongTensor) -> torch.Tensor:
    """(rows, seq - 1) fp32 log-probability of each next token: position t scores token t+1 (the one shift)."""
    logits = model(input_ids=input_ids, position_ids=position_ids_from_bos(input_ids), attention_mask=None,
                   use_cache=False).logits
    return torch.log_softmax(logits[:, :-1].float(), dim=-1).gather(-1, input_ids[:, 1:, None]).squeeze(-1)


def answer_logps(model: Any, input_ids: torch.LongTensor, answer_mask: torch.Tensor,
                 segment_ids: torch.LongTensor | None = None, num_segments: int | None = None) -> torch.Tensor:
    """Summed log-probability (fp32) of the answer tokens of each row, or of each segment of packed rows
    (``segment_ids`` (rows, seq): which answer a position belongs to; ``num_segments`` of them)."""
    logps = token_logps(model, input_ids)
    scored = logps * answer_mask[:, 1:].to(logps.dtype)
    if segment_ids is None:
        return scored.sum(dim=1)
    return torch.zeros(num_segments, dtype=scored.dtype, device=scored.device).index_add(
        0, segment_ids[:, 1:].reshape(-1), scored.reshape(-1))


def pair_logps(model: Any, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(chosen, rejected) answer log-probs of a batch of pairs: one forward over the chosen rows then the rejected
    rows (both padded to the batch's width)."""
    ids = torch.cat([batch["chosen_ids"], batch["rejected_ids"]])
    mask = torch.cat([batch["chosen_mask"], batch["rejected_mask"]])
    return answer_logps(model, ids, mask).chunk(2)


def preference_losses(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, reference_chosen: torch.Tensor,
                      reference_rejected: torch.Tensor, loss_type: str, beta: float, label_smoothing: float = 0.0,
                      chosen_tokens: torch.Tensor | None = None, rejected_tokens: torch.Tensor | None = None,
                      sft_weight: float = 0.0) -> dict[str, torch.Tensor]:
    """Per-pair ``loss``, ``chosen_reward`` and ``rejected_reward`` (beta * policy/reference log-ratio).

    * sigmoid (DPO, Rafailov et al. 2023): ``-log sigmoid(beta * margin)``; with ``label_smoothing`` eps the
      conservative DPO of Mitchell (2023): ``-(1 - eps) log sigmoid(beta m) - eps log sigmoid(-beta m)``.
    * ipo (Azar et al. 2023, eq. 17): ``(m' - 1 / (2 beta))^2`` with m' the difference of the *per-token* log-ratios
      (answer token counts ``chosen_tokens`` / ``rejected_tokens``), the normalisation TRL uses.
    * hinge (SLiC, Zhao et al. 2023): ``relu(1 - beta * margin)``.

    ``sft_weight`` w adds ``w * NLL(chosen) / chosen_tokens`` per pair, the length-normalised NLL term of RPO (Pang et
    al. 2024, "Iterative Reasoning Preference Optimization"; TRL: ``loss_type=[..., "sft"]``, whose term is the mean
    over the batch's chosen tokens, the same for a single pair). The preference losses only see the *difference* of
    the two answers' log-ratios, and are known to lower the likelihood of the chosen answer too ("likelihood
    displacement"); the NLL term keeps the chosen answers likely.
    """
    chosen_ratio, rejected_ratio = policy_chosen - reference_chosen, policy_rejected - reference_rejected
    margin = chosen_ratio - rejected_ratio
    if loss_type == "sigmoid":
        loss = -(1 - label_smoothing) * F.logsigmoid(beta * margin) - label_smoothing * F.logsigmoid(-beta * margin)
    elif loss_type == "ipo":
        if chosen_tokens is None or rejected_tokens is None:
            raise ValueError("the IPO loss needs the answer token counts")
        per_token = chosen_ratio / chosen_tokens.clamp_min(1) - rejected_ratio / rejected_tokens.clamp_min(1)
        loss = (per_token - 1 / (2 * beta)) ** 2
    elif loss_type == "hinge":
        loss = torch.relu(1 - beta * margin)
    else:
        raise ValueError(f"unknown preference loss {loss_type!r}; expected one of {', '.join(LOSS_TYPES)}")
    if sft_weight:
        if chosen_tokens is None:
            raise ValueError("the sft term needs the chosen answers' token counts")
        loss = loss - sft_weight * policy_chosen / chosen_tokens.clamp_min(1)
    return {"loss": loss, "chosen_reward": beta * chosen_ratio.detach(), "rejected_reward": beta * rejected_ratio.detach()}
