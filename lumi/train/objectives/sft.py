"""Supervised fine-tuning (stage 70): the shared trainer loop on stage 60's packed conversations, loss on the
assistant tokens only, LoRA through PEFT or full fine-tuning.

A batch is ``{"input_ids", "loss_mask"}`` rows of several conversations each; every conversation starts with BOS,
so ``lumi.lm.loss`` restarts the position ids there and, with ``attention_mask=None`` and no cache, transformers
builds the block-diagonal causal mask: no conversation attends to another. Targets are the inputs shifted once,
kept only where the loss mask marks the predicted token (an assistant content token or its ``<|im_end|>``).

Checkpoints: LoRA ones are PEFT adapter dirs (``adapter_config.json``, ``adapter_model.safetensors``) plus the chat
tokenizer files and the base's fingerprint (``lumi.lora``); full ones are ``save_pretrained`` dirs with the chat
tokenizer; both carry a generation config whose ``eos_token_id`` holds the end-of-turn id, and beside them the
trainer state for exact resume and ``sft_config.json``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable, Literal

import numpy as np
import torch
from pydantic import Field
from torch import nn
from transformers import PreTrainedModel

from lumi.core.config import config_to_dict
from lumi.core.errors import LumiError
from lumi.core.files import sha256_file
from lumi.formats.adapter import base_fingerprint
from lumi.formats.finetune_data import read_sft_split, verify_data_files
from lumi.formats.lineage import require_same_world
from lumi.formats.model_dir import open_model_dir, require_same_tokenizer
from lumi.data.chat import loss_targets
from lumi.data.sft_corpus import MANIFEST, TOKENIZER_SUBDIR, read_sft_manifest
from lumi.lm.loss import summed_nats
from lumi.train.config import TrainerConfig
from lumi.train.finetune import FineTuneObjective, LoraSettings, method_description


class SFTConfig(TrainerConfig):
    """Stage 70 (``config/sft/training/*.json``): the shared trainer part plus the base model, the SFT data, the
    method and the length of training."""

    base_model: str | None = Field(None, description="base checkpoint dir (a save_pretrained LlamaForCausalLM); "
                                                     "--model-path")
    data_dir: str | None = Field(None, description="stage-60 SFT data dir; --data-dir")
    method: Literal["lora", "full"] = Field("lora", description="LoRA adapters through PEFT, or every weight")
    lora: LoraSettings = Field(default_factory=LoraSettings, description="LoRA settings (method lora)")
    epochs: float | None = Field(None, gt=0, description="passes over the train rows (max_steps wins when set)")
    eval_max_rows: int = Field(256, gt=0, description="val rows scored at every eval interval")
    merge_adapters: bool = Field(False, description="LoRA: also write the merged model to <run>/merged/")


def open_sft_data(data_dir: str | Path, base: str | Path) -> dict[str, Any]:
    """Stage 60's output and the base model it is for, both verified: the base a model dir (not an adapter) with
    the data's tokenizer (``require_same_tokenizer``), the splits' ids inside its vocabulary, a train split with
    rows and target tokens (``lumi.formats.finetune_data``)."""
    directory = Path(data_dir)
    manifest = read_sft_manifest(directory)
    verify_data_files(directory, manifest, MANIFEST)
    opened = open_model_dir(base, "SFT base model", allow_adapter=False)
    require_same_tokenizer(opened.path, manifest.get("tokenizer_sha256"), directory,
                           "rebuild the data with --tokenizer-dir pointing at this model")
    require_same_world(opened.path, directory, manifest.get("config"))
    vocab_size = opened.config.get("vocab_size")
    splits = {split: read_sft_split(directory, split, vocab_size if isinstance(vocab_size, int) else None,
                                    need_targets=split == "train") for split in ("train", "val")}
    if len(splits["train"][0]) == 0:
        raise LumiError(f"{directory}: the train split has no rows")
    return {"manifest": manifest, "splits": splits, "tokenizer_dir": directory / TOKENIZER_SUBDIR,
            "base": opened.path}


class SFTLoss(nn.Module):
    """What DDP/FSDP2 wrap: summed nats over the assistant targets of a batch of packed conversations."""

    def __init__(self, model: PreTrainedModel, compile_chunks: bool = False):
        super().__init__()
        self.model, self.compile_chunks = model, compile_chunks

    def forward(self, batch: dict[str, torch.Tensor], training: bool) -> torch.Tensor:
        # A PeftModel's LoRA layers sit inside its base model: the loss runs the base's backbone and head.
        causal_lm = self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model
        return summed_nats(causal_lm, batch["input_ids"], targets=loss_targets(batch["input_ids"],
                                                                                batch["loss_mask"]),
                           compile_chunks=self.compile_chunks)


def target_count(batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Targets of a batch (the summed loss is averaged over them): loss-mask positions after a row's first."""
    return (batch["loss_mask"][:, 1:] != 0).sum()


def rows_batch(tokens: np.ndarray, mask: np.ndarray, rows: list[int] | range) -> dict[str, torch.Tensor]:
    index = np.asarray(list(rows), dtype=np.int64)
    return {"input_ids": torch.from_numpy(tokens[index].astype(np.int64)),
            "loss_mask": torch.from_numpy(mask[index].astype(np.int64))}


class SFTObjective(FineTuneObjective):
    """Packed conversations in, assistant-only loss out; the Objective of ``lumi.train.objectives.base``."""

    name = "sft"
    config_file = "sft_config.json"

    def __init__(self, config: SFTConfig, rank: int = 0, world_size: int = 1):
        if config.base_model is None or config.data_dir is None:
            raise LumiError("lumi sft needs --model-path (the base model) and --data-dir (stage 60 output)")
        self.config, self.rank, self.world_size = config, rank, world_size
        self.data = open_sft_data(config.data_dir, config.base_model)
        self.start, self.start_purpose = self.data["base"], "SFT base model"
        self.tokenizer_dir = self.data["tokenizer_dir"]
        self.train_tokens, self.train_mask = self.data["splits"]["train"]
        self.val_tokens, self.val_mask = self.data["splits"]["val"]
        self.seq_len = int(self.train_tokens.shape[1])
        self.plan_steps(len(self.train_tokens), config.micro_batch_size * config.grad_accumulation, "SFT")
        self.run_name = f"{config.method}"
        self.resolved = {"config": config_to_dict(config), "base_sha256": base_fingerprint(self.start),
                         "data_manifest_sha256": sha256_file(Path(config.data_dir) / MANIFEST),
                         "seq_len": self.seq_len, "world_size": world_size, "global_batch_rows": self.global_items,
                         "total_steps": self.total_steps}

    # --- model ---------------------------------------------------------------------------------------------------

    def loss_module(self, model: PreTrainedModel, compile: bool) -> nn.Module:
        return SFTLoss(model, compile_chunks=compile)

    def count(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return target_count(batch)

    # --- data ----------------------------------------------------------------------------------------------------

    def next_step(self) -> list[dict[str, torch.Tensor]]:
        return self.rank_micro_batches(lambda rows: rows_batch(self.train_tokens, self.train_mask, rows))

    def step_tokens(self, micro_batches: list[dict[str, torch.Tensor]]) -> int:
        return self.global_items * self.seq_len

    def evaluate(self, score: Callable[[dict[str, torch.Tensor]], torch.Tensor]) -> dict[str, float]:
        """Val loss over the assistant targets of the first ``eval_max_rows`` val rows."""
        rows = min(self.config.eval_max_rows, len(self.val_tokens))
        nats = targets = 0.0
        for start in range(0, rows, self.config.micro_batch_size):
            batch = rows_batch(self.val_tokens, self.val_mask, range(start, min(start + self.config.micro_batch_size,
                                                                                rows)))
            nats += float(score(batch))
            targets += int(target_count(batch))
        return {"val/loss": nats / targets, "val/perplexity": math.exp(min(nats / targets, 50.0))} if targets else {}

    # --- checkpoints and reporting -------------------------------------------------------------------------------

    def describe(self) -> list[str]:
        manifest = self.data["manifest"]
        return [f"SFT ({method_description(self.config)}) of {self.start} on {self.config.data_dir}: "
                f"{len(self.train_tokens)} train rows of "
                f"{self.seq_len} tokens ({manifest['splits']['train']['target_tokens']:,} assistant targets), "
                f"template {manifest['template']}, {self.total_steps} steps of {self.global_items} rows"]

    def summary(self) -> str:
        return f"{self.sampler.epochs()[0]:.2f} epochs of the SFT train rows"

    def batch_shape(self) -> str:
        return f"micro_batch_size={self.config.micro_batch_size} x seq_len={self.seq_len} (SFT rows)"

    def oom_advice(self) -> str:
        return ("rebuild the SFT data with a shorter --seq-len (lumi sft-corpus), or use method lora / "
                "activation_checkpointing")
