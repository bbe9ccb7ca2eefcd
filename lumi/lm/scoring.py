"""Loss, perplexity and bits per byte from summed nats: the one implementation the trainer's validation and the
evaluator both report, and the loop that scores a packed split for both (same rows, same batches, same numbers).

Bits per byte = sum of nats / (ln 2 * UTF-8 bytes of the text scored), which compares models with different
tokenizers. For a packed split the byte count comes from the pack manifest; when only the first ``max_rows`` rows are
scored it is prorated, ``split.bytes * rows_scored / split.num_rows`` (rows hold equal token counts, so this assumes
bytes per token is uniform across rows -- exact for the whole split, an estimate for a prefix).
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple

import numpy as np
import torch

from lumi.core.errors import LumiError
from lumi.formats.packed import PackedSplit
from lumi.lm.loss import count_scored_tokens

# exp() of a diverged loss overflows a float; perplexity is reported as exp(50) (5e21) beyond it
MAX_LOG_PERPLEXITY = 50.0


def perplexity(loss: float) -> float:
    return math.exp(min(loss, MAX_LOG_PERPLEXITY))


def bits_per_byte(sum_nats: float, num_bytes: float) -> float:
    return sum_nats / (math.log(2) * num_bytes)


def summarize(sum_nats: float, tokens: int, num_bytes: float) -> dict[str, float]:
    if tokens == 0:
        raise LumiError("perplexity: nothing to score (no tokens)")
    loss = sum_nats / tokens
    return {"loss": loss, "perplexity": perplexity(loss), "bits_per_byte": bits_per_byte(sum_nats, num_bytes),
            "tokens": tokens, "bytes": num_bytes}


class PackedScore(NamedTuple):
    """Summed nats and scored tokens over the first ``rows`` rows of a packed split, and the bytes of text they hold
    (prorated, see the module docstring)."""

    nats: float
    tokens: int
    bytes: float
    rows: int


def score_packed_split(split: PackedSplit, summed_nats: Callable[[torch.LongTensor], torch.Tensor], batch_size: int,
                       max_rows: int | None = None) -> PackedScore:
    """Score the first ``max_rows`` rows (all by default) in batches of ``batch_size`` CPU rows with ``summed_nats``
    (summed nats over a batch's scored targets). One loop for the evaluator, which scores the bare model, and the
    trainer, which scores through its DDP/FSDP2-wrapped module: same rows, same batches, so their numbers agree."""
    rows = split.num_rows if max_rows is None else min(max_rows, split.num_rows)
    if rows == 0:
        raise LumiError(f"packed split '{split.name}' has no rows to evaluate")
    sum_nats, tokens = 0.0, 0
    with torch.no_grad():
        for start in range(0, rows, batch_size):
            batch = torch.from_numpy(np.asarray(split.rows[start:min(start + batch_size, rows)], dtype=np.int64))
            sum_nats += float(summed_nats(batch))
            tokens += count_scored_tokens(batch)
    return PackedScore(sum_nats, tokens, split.bytes * rows / split.num_rows, rows)
