"""Preference tuning (stage 90): the shared trainer loop on stage 85's chosen/rejected pairs, with the DPO sigmoid,
IPO or hinge loss (``lumi.lm.preference``), LoRA through PEFT or every weight.

The policy starts from an SFT model dir (stage 70's full output or a merged adapter). The reference is that same
model, frozen: with LoRA it is the policy with its adapters disabled (``PeftModel.disable_adapter``: no second model
in memory); with full training a frozen copy loaded from the SFT dir -- or neither, when ``precompute_reference``
scores every pair with the reference once at start-up and keeps only the log-probs.

A batch is ``{"chosen_ids", "chosen_mask", "rejected_ids", "rejected_mask"}`` (pairs x width, PAD-padded), plus
``ref_chosen`` / ``ref_rejected`` when precomputed; ``count`` is its number of pairs, so a step's loss is the mean
over the pairs of the global batch. Checkpoints are what stage 70 writes (adapter dirs or ``save_pretrained`` dirs
with the chat tokenizer), plus ``dpo_config.json`` and the trainer state for exact resume.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Literal

import numpy as np
import torch
from pydantic import Field
from torch import nn
from transformers import PreTrainedModel

from lumi.core.config import config_to_dict
from lumi.core.errors import LumiError
from lumi.core.files import sha256_file
from lumi.core.special_tokens import PAD_ID
from lumi.data.preference import MANIFEST, pairs_batch, read_dpo_manifest
from lumi.data.sft_corpus import TOKENIZER_SUBDIR
from lumi.lm.preference import LOSS_TYPES, pair_logps, preference_losses
from lumi.formats.adapter import base_fingerprint, is_adapter_dir
from lumi.formats.finetune_data import read_pairs, verify_data_files
from lumi.formats.lineage import require_same_world
from lumi.formats.model_dir import ModelDir, open_model_dir, require_same_tokenizer
from lumi.train.config import TrainerConfig
from lumi.train.distributed import all_reduce_sum
from lumi.train.finetune import FineTuneObjective, LoraSettings, method_description

CHAT_TEMPLATE_FILE = "chat_template.jinja"


class DPOConfig(TrainerConfig):
    """Stage 90 (``config/dpo/training/*.json``): the shared trainer part plus the SFT model, the preference data,
    the loss and the method."""

    model_path: str | None = Field(None, description="the SFT model dir the policy and reference start from (a "
                                                      "merged/full save_pretrained dir; an adapter dir is merged "
                                                      "first by lumi dpo); --model-path")
    data_dir: str | None = Field(None, description="stage-85 DPO data dir; --data-dir")
    loss: Literal[*LOSS_TYPES] = Field("sigmoid", description="sigmoid (DPO), ipo, or hinge (SLiC)")
    beta: float = Field(0.1, gt=0, description="strength of the pull towards the reference (DPO beta, IPO tau)")
    label_smoothing: float = Field(0.0, ge=0, lt=0.5, description="sigmoid loss: assumed share of flipped "
                                                                  "preference labels (conservative DPO)")
    sft_weight: float = Field(0.0, ge=0, description="weight of an NLL term on the chosen answer (its per-token mean, "
                                                     "per pair) added to the preference loss: RPO (Pang et al. 2024; "
                                                     "TRL's loss_type [..., 'sft']). Keeps the chosen answers likely, "
                                                     "which the preference loss alone can lower; 0 disables it")
    method: Literal["lora", "full"] = Field("lora", description="LoRA adapters through PEFT, or every weight")
    lora: LoraSettings = Field(default_factory=LoraSettings, description="LoRA settings (method lora)")
    precompute_reference: bool = Field(False, description="score every pair with the reference once at start-up "
                                                          "and keep only its log-probs (full: no frozen copy in "
                                                          "memory during training)")
    epochs: float | None = Field(None, gt=0, description="passes over the train pairs (max_steps wins when set)")
    eval_max_pairs: int = Field(256, gt=0, description="val pairs scored at every eval interval")


def check_policy(model_path: str | Path, manifest: dict, data_tokenizer: Path) -> ModelDir:
    """An SFT model dir the DPO data fits: a model (not an adapter), with the data's tokenizer and chat template."""
    path = Path(model_path)
    if is_adapter_dir(path):
        raise LumiError(f"{path}: is a LoRA adapter dir; merge it first (lumi merge-lora), or let lumi dpo do it")
    opened = open_model_dir(path, "DPO policy (the SFT model)", allow_adapter=False)
    if not (path / CHAT_TEMPLATE_FILE).is_file():
        raise LumiError(f"{path}: no chat template ({CHAT_TEMPLATE_FILE}); DPO starts from an SFT model (lumi sft "
                        "output or lumi merge-lora), not a pretrained checkpoint")
    if (path / CHAT_TEMPLATE_FILE).read_text() != (data_tokenizer / CHAT_TEMPLATE_FILE).read_text():
        raise LumiError(f"{path}: its chat template differs from the one the DPO data was built with; rebuild the "
                        f"data with --tokenizer-dir {path} (and its --template)")
    require_same_tokenizer(path, manifest.get("tokenizer_sha256"), data_tokenizer.parent,
                           f"rebuild the data with --tokenizer-dir {path}")
    return opened


class PreferenceMeter:
    """Device-side sums of a run of batches (no host reads until ``read``). ``across_processes``: ``read`` sums them
    over the processes first (training: each scores its own pairs, so every process must read together); evaluation
    scores the same pairs on every process and reads its own."""

    NAMES = ("pairs", "loss", "chosen_reward", "rejected_reward", "correct")

    def __init__(self, across_processes: bool):
        self.across_processes = across_processes
        self.sums: dict[str, torch.Tensor] | None = None

    def add(self, terms: dict[str, torch.Tensor]) -> None:
        values = {"pairs": torch.tensor(float(terms["loss"].numel()), device=terms["loss"].device),
                  "loss": terms["loss"].detach().sum(), "chosen_reward": terms["chosen_reward"].sum(),
                  "rejected_reward": terms["rejected_reward"].sum(),
                  "correct": (terms["chosen_reward"] > terms["rejected_reward"]).float().sum()}
        self.sums = values if self.sums is None else {k: self.sums[k] + v for k, v in values.items()}

    def read(self, prefix: str) -> dict[str, float]:
        """Means per pair, then reset."""
        if self.sums is None:
            return {}
        stacked = torch.stack([self.sums[name] for name in self.NAMES])
        if self.across_processes:
            all_reduce_sum(stacked)
        sums = dict(zip(self.NAMES, stacked.tolist()))
        self.sums = None
        pairs = max(sums["pairs"], 1.0)
        chosen, rejected = sums["chosen_reward"] / pairs, sums["rejected_reward"] / pairs
        return {f"{prefix}/loss": sums["loss"] / pairs, f"{prefix}/rewards/chosen": chosen,
                f"{prefix}/rewards/rejected": rejected, f"{prefix}/rewards/margins": chosen - rejected,
                f"{prefix}/rewards/accuracy": sums["correct"] / pairs}


class DPOLoss(nn.Module):
    """What DDP/FSDP2 wrap: the summed preference loss of a batch of pairs, policy against the reference."""

    def __init__(self, model: PreTrainedModel, config: DPOConfig, reference: PreTrainedModel | None):
        super().__init__()
        self.model, self.config, self.reference = model, config, reference
        self.meters = {True: PreferenceMeter(across_processes=True), False: PreferenceMeter(across_processes=False)}

    def reference_logps(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        if "ref_chosen" in batch:
            return batch["ref_chosen"], batch["ref_rejected"]
        with torch.no_grad():
            if self.reference is not None:
                return pair_logps(self.reference, batch)
            with self.model.disable_adapter():
                return pair_logps(self.model, batch)

    def terms(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        policy_chosen, policy_rejected = pair_logps(self.model, batch)
        reference_chosen, reference_rejected = self.reference_logps(batch)
        return preference_losses(policy_chosen, policy_rejected, reference_chosen, reference_rejected,
                                 self.config.loss, self.config.beta, self.config.label_smoothing,
                                 batch["chosen_mask"].sum(dim=1), batch["rejected_mask"].sum(dim=1),
                                 self.config.sft_weight)

    def forward(self, batch: dict[str, torch.Tensor], training: bool) -> torch.Tensor:
        terms = self.terms(batch)
        self.meters[training].add(terms)
        return terms["loss"].sum()


class DPOObjective(FineTuneObjective):
    """Preference pairs in, DPO-family loss out; the Objective of ``lumi.train.objectives.base``."""

    name = "dpo"
    config_file = "dpo_config.json"
    rows_description = "pairs of up to"

    def __init__(self, config: DPOConfig, rank: int = 0, world_size: int = 1):
        if config.model_path is None or config.data_dir is None:
            raise LumiError("lumi dpo needs --model-path (the SFT model) and --data-dir (stage 85 output)")
        self.config, self.rank, self.world_size = config, rank, world_size
        data_dir = Path(config.data_dir)
        self.manifest = read_dpo_manifest(data_dir)
        verify_data_files(data_dir, self.manifest, MANIFEST)
        self.tokenizer_dir = data_dir / TOKENIZER_SUBDIR
        policy = check_policy(config.model_path, self.manifest, self.tokenizer_dir)
        require_same_world(policy.path, data_dir, self.manifest.get("config"))
        self.policy_dir = self.start = policy.path
        self.start_purpose = "DPO policy (the SFT model)"
        vocab_size = policy.config.get("vocab_size")
        self.train, self.val = (read_pairs(data_dir, split, vocab_size if isinstance(vocab_size, int) else None)
                                for split in ("train", "val"))
        if len(self.train["chosen_ids"]) == 0:
            raise LumiError(f"{data_dir}: the train split has no pairs")
        self.seq_len = int(self.train["chosen_ids"].shape[1])
        self.plan_steps(len(self.train["chosen_ids"]), config.micro_batch_size * config.grad_accumulation, "DPO")
        self.run_name = f"dpo_{config.method}"
        self.reference: dict[str, dict[str, torch.Tensor]] | None = None  # precomputed, per split
        self.loss: DPOLoss | None = None
        self.resolved = {"config": config_to_dict(config), "policy_sha256": base_fingerprint(self.policy_dir),
                         "data_manifest_sha256": sha256_file(data_dir / MANIFEST), "seq_len": self.seq_len,
                         "world_size": world_size, "global_batch_pairs": self.global_items,
                         "total_steps": self.total_steps}

    # --- model ---------------------------------------------------------------------------------------------------

    def loss_module(self, model: PreTrainedModel, compile: bool) -> nn.Module:
        device = next(model.parameters()).device
        frozen = None
        if self.config.method == "full" or self.config.precompute_reference:
            frozen = self.load_start().to(device).eval().requires_grad_(False)
        if self.config.precompute_reference:
            self.reference = {"train": self._score_reference(frozen, self.train),
                              "val": self._score_reference(frozen, self.val)}
            frozen = None  # only the log-probs are kept
        elif self.config.method == "lora":
            frozen = None  # the adapter-disabled policy is the reference
        self.loss = DPOLoss(model, self.config, frozen)
        return self.loss

    def _score_reference(self, model: PreTrainedModel, arrays: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
        device = next(model.parameters()).device
        chosen, rejected = [], []
        size = self.config.micro_batch_size
        with torch.no_grad():
            for start in range(0, len(arrays["chosen_ids"]), size):
                batch = pairs_batch(arrays, range(start, min(start + size, len(arrays["chosen_ids"]))))
                c, r = pair_logps(model, {k: v.to(device) for k, v in batch.items()})
                chosen.append(c.cpu())
                rejected.append(r.cpu())
        empty = torch.zeros(0)
        return {"ref_chosen": torch.cat(chosen) if chosen else empty,
                "ref_rejected": torch.cat(rejected) if rejected else empty}

    def count(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return torch.ones_like(batch["chosen_ids"][:, 0]).sum()

    # --- data ----------------------------------------------------------------------------------------------------

    def _split_reference(self, split: str) -> dict[str, torch.Tensor] | None:
        return self.reference[split] if self.reference is not None else None

    def next_step(self) -> list[dict[str, torch.Tensor]]:
        return self.rank_micro_batches(lambda rows: pairs_batch(self.train, rows, self._split_reference("train")))

    def step_tokens(self, micro_batches: list[dict[str, torch.Tensor]]) -> int:
        return self.world_size * sum(int((b[f"{side}_ids"] != PAD_ID).sum()) for b in micro_batches
                                     for side in ("chosen", "rejected"))

    def interval_metrics(self) -> dict[str, float]:
        """Training rewards, margins and reward accuracy since the last log line, over every process's pairs (every
        process calls this at each log line)."""
        return self.loss.meters[True].read("train") if self.loss is not None else {}

    def evaluate(self, score: Callable[[dict[str, torch.Tensor]], torch.Tensor]) -> dict[str, float]:
        """Held-out loss, rewards, margins and reward accuracy over the first ``eval_max_pairs`` val pairs."""
        pairs = min(self.config.eval_max_pairs, len(self.val["chosen_ids"]))
        self.loss.meters[False].read("val")  # drop anything left over
        for start in range(0, pairs, self.config.micro_batch_size):
            score(pairs_batch(self.val, range(start, min(start + self.config.micro_batch_size, pairs)),
                              self._split_reference("val")))
        return self.loss.meters[False].read("val")

    # --- checkpoints and reporting -------------------------------------------------------------------------------

    def describe(self) -> list[str]:
        reference = ("precomputed log-probs" if self.config.precompute_reference else
                     "the adapter-disabled policy" if self.config.method == "lora" else "a frozen copy")
        return [f"DPO ({self.config.loss}, beta {self.config.beta}, {method_description(self.config)}) of {self.policy_dir} on "
                f"{self.config.data_dir}: {len(self.train['chosen_ids'])} train pairs, "
                f"{len(self.val['chosen_ids'])} val pairs of up to {self.seq_len} tokens; reference: {reference}; "
                f"{self.total_steps} steps of {self.global_items} pairs"]

    def summary(self) -> str:
        return f"{self.sampler.epochs()[0]:.2f} epochs of the DPO train pairs"

    def batch_shape(self) -> str:
        return f"micro_batch_size={self.config.micro_batch_size} pairs x up to {self.seq_len} tokens (x2: chosen, rejected)"

    def oom_advice(self) -> str:
        copy = ", set precompute_reference=true (no frozen reference copy)" if (
            self.config.method == "full" and not self.config.precompute_reference) else ""
        return f"rebuild the DPO data with a shorter --seq-len (now {self.seq_len}; prompts are cut at a turn){copy}"
