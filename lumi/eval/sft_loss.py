"""Val loss of a chat model on a stage-60 split, over the assistant tokens only (what SFT optimises), scored through
the training loss (``lumi.lm.loss.summed_nats`` with ``lumi.data.chat.loss_targets``): packed conversations kept
apart by the position-id restart at each BOS, the same rows and targets the trainer's val loss uses."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedModel

from lumi.core.errors import LumiError
from lumi.data.chat import loss_targets
from lumi.data.sft_corpus import read_sft_manifest
from lumi.formats.finetune_data import read_sft_split
from lumi.formats.model_dir import require_same_tokenizer
from lumi.formats.model_io import model_device
from lumi.lm.loss import summed_nats


@torch.no_grad()
def sft_split_loss(model: PreTrainedModel, model_path: Path, sft_dir: str | Path, split: str, batch_size: int,
                   max_rows: int | None) -> dict[str, Any]:
    manifest = read_sft_manifest(sft_dir)
    require_same_tokenizer(model_path, manifest["tokenizer_sha256"], sft_dir,
                           f"rebuild it with --tokenizer-dir {model_path}")
    tokens, mask = read_sft_split(sft_dir, split, model.config.vocab_size, need_targets=False)
    rows = len(tokens) if max_rows is None else min(max_rows, len(tokens))
    nats, targets = 0.0, 0
    device = model_device(model)
    for start in range(0, rows, batch_size):
        ids = torch.from_numpy(tokens[start:start + min(batch_size, rows - start)].astype("int64")).to(device)
        scored = loss_targets(ids, torch.from_numpy(mask[start:start + len(ids)].astype("int64")).to(device))
        nats += float(summed_nats(model, ids, targets=scored))
        targets += int((scored != -100).sum())
    if targets == 0:
        raise LumiError(f"{sft_dir}: split {split!r} has no assistant tokens to score")
    return {"loss": nats / targets, "perplexity": math.exp(min(nats / targets, 50.0)), "target_tokens": targets,
            "rows": rows, "rows_total": len(tokens), "template": manifest["template"]}
