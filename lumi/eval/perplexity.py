"""Perplexity and bits per byte: on a packed split (the trainer's validation loss) and on raw text.

Packed split: every row goes through ``lumi.lm.loss.summed_nats`` (document masking, labels shifted once), the very
function training minimises, in the loop the trainer's validation uses too (``lumi.lm.scoring.score_packed_split``),
so the trainer's val loss and this evaluator agree exactly.

Raw text (a local file, or a ``datasets`` dataset whose text field is joined with ``"\\n\\n"`` as in the transformers
perplexity guide): the whole text is tokenized once (with the tokenizer's special tokens: BOS first when the evaluator
loads it with ``add_bos``, the default) and scored with a **sliding window** of
``window`` tokens moving ``stride`` tokens at a time; each window scores only the tokens no earlier window scored,
using the tokens before them as context (the standard HF recipe). With ``stride < window`` every token but the first
is scored exactly once (so with BOS, every token of the text).

Bits per byte = sum of nats / (ln 2 * UTF-8 bytes of the text scored), which compares models with different
tokenizers (``lumi.lm.scoring``, which also says how a packed split's bytes are prorated).
"""

from __future__ import annotations

from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from lumi.core.errors import LumiError
from lumi.eval.loglikelihood import padding_id, right_padded
from lumi.formats.model_io import model_device
from lumi.formats.packed import PackedSplit
from lumi.lm.loss import summed_nats
from lumi.lm.scoring import score_packed_split, summarize


def evaluate_packed_split(model: PreTrainedModel, split: PackedSplit, batch_size: int = 8, max_rows: int | None = None,
                          device: torch.device | str | None = None) -> dict[str, Any]:
    """Mean loss (nats/token), perplexity and bits per byte over the first ``max_rows`` rows (all by default), each
    document scored alone (document masking, the trainer's metric), and the same under ``causal``: whole rows under
    a plain causal mask (documents see the ones before them in the row, as a model trained without masking reads
    them; docs/TRAINING.md says what the gap between the two means).

    Restores the model's train/eval mode afterwards, so the trainer can call it mid-run.
    """
    device = torch.device(device) if device is not None else model_device(model)
    was_training = model.training
    model.eval()
    try:
        docs, causal = (score_packed_split(split, partial(scored_nats, model, device, masking), batch_size, max_rows)
                        for masking in (True, False))
    finally:
        model.train(was_training)
    result = summarize(docs.nats, docs.tokens, docs.bytes)
    result["rows"] = docs.rows
    result["causal"] = {key: value for key, value in summarize(causal.nats, causal.tokens, causal.bytes).items()
                        if key in ("loss", "perplexity", "bits_per_byte")}
    return result


def scored_nats(model: PreTrainedModel, device: torch.device, document_masking: bool,
                batch: torch.LongTensor) -> torch.Tensor:
    return summed_nats(model, batch.to(device), document_masking=document_masking)


def sliding_windows(num_tokens: int, window: int, stride: int) -> list[tuple[int, int, int]]:
    """(begin, end, num_targets) per window: tokens ``[end - num_targets, end)`` are scored in that window."""
    if not 0 < stride <= window:
        raise LumiError(f"perplexity: stride must be between 1 and the window ({window}), got {stride}")
    spans, previous_end = [], 0
    for begin in range(0, num_tokens, stride):
        end = min(begin + window, num_tokens)
        # A window's first token has no context in it: never a target (token 0 of the text is never scored; with
        # stride == window, non-overlapping chunks, neither is each chunk's first token).
        spans.append((begin, end, min(end - previous_end, end - begin - 1)))
        previous_end = end
        if end == num_tokens:
            break
    return spans


@torch.no_grad()
def score_token_stream(model: PreTrainedModel, token_ids: list[int], window: int, stride: int,
                       batch_size: int = 8, pad_id: int = 0) -> tuple[float, int]:
    """(sum of nats, tokens scored) of a token stream under the sliding window; windows are batched, padded right."""
    device = model_device(model)
    spans = sliding_windows(len(token_ids), window, stride)
    sum_nats, scored = 0.0, 0
    for start in range(0, len(spans), batch_size):
        chunk = spans[start:start + batch_size]
        batch = right_padded([token_ids[begin:end] for begin, end, _ in chunk], pad_id)
        logits = model(input_ids=batch.to(device), use_cache=False).logits
        for row, (begin, end, num_targets) in enumerate(chunk):
            length = end - begin
            predicting = logits[row, length - num_targets - 1:length - 1].float()  # position t predicts t + 1
            targets = batch[row, length - num_targets:length].to(device)
            sum_nats += float(F.cross_entropy(predicting, targets, reduction="sum"))
            scored += num_targets
    return sum_nats, scored


def text_perplexity(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, text: str, window: int,
                    stride: int, batch_size: int = 8) -> dict[str, Any]:
    if not text:
        raise LumiError("perplexity: the text is empty")
    token_ids = tokenizer(text)["input_ids"]
    sum_nats, scored = score_token_stream(model, token_ids, window, stride, batch_size, padding_id(tokenizer))
    result = summarize(sum_nats, scored, len(text.encode("utf-8")))
    result.update(window=window, stride=stride)
    return result


def read_dataset_text(dataset: str, dataset_config: str | None, split: str, text_field: str,
                      data_files: str | list[str] | None = None) -> str:
    """The text field of every row joined with blank lines (how the HF guide scores WikiText-2 raw)."""
    import datasets  # imported here: loading it costs a second and file sources never need it

    try:
        rows = datasets.load_dataset(dataset, dataset_config, split=split, data_files=data_files)
    except Exception as exc:  # datasets raises many unrelated types (connection, file, schema, builder errors)
        raise LumiError(f"dataset {dataset} {dataset_config or ''}: could not be loaded: "
                        f"{type(exc).__name__}: {exc}") from None
    if text_field not in rows.column_names:
        raise LumiError(f"dataset {dataset}: no column {text_field!r} (have {rows.column_names})")
    return "\n\n".join(rows[text_field])
