"""The config part every trainer shares (``TrainerConfig``): batch, optimizer, schedule, precision, distributed,
intervals and logging. A stage's config subclasses it with its own fields (``lumi.train.objectives.pretrain.
PretrainConfig``), keeping the keys flat so a config file is one JSON object."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from lumi.core.config import ConfigModel
from lumi.model import ATTENTION_IMPLEMENTATIONS

# Fields that may change when a run is resumed: they only change what is logged or kept, never the numbers.
RESUMABLE_CHANGES = frozenset({"eval_interval", "save_interval", "log_interval", "keep_last_k", "tensorboard",
                               "wandb_project"})


class TrainerConfig(ConfigModel):
    name: str | None = Field(None, min_length=1, description="run name: checkpoints go to <output-dir>/<name>/ "
                                                             "(default: the objective's, e.g. the architecture's name)")
    max_steps: int | None = Field(None, gt=0, description="optimizer steps (wins over a stage's own budget, such as "
                                                          "max_tokens)")
    micro_batch_size: int = Field(gt=0, description="rows per forward pass per process")
    grad_accumulation: int = Field(1, gt=0, description="micro-batches per optimizer step")

    optimizer: Literal["adamw", "muon"] = Field(
        "adamw", description="adamw: AdamW for every parameter; muon: Muon for the hidden 2-D weight matrices and "
                             "AdamW (lr) for embeddings, output head and norms (docs/TRAINING.md, the recipe)")
    lr: float = Field(gt=0, le=1, description="peak learning rate of AdamW's parameters (above 1 no run survives its "
                                              "first steps)")
    muon_lr: float | None = Field(None, gt=0, le=1, description="optimizer muon: peak learning rate of the Muon "
                                                                "matrices, on AdamW's scale (update RMS matched to "
                                                                "AdamW's); default: lr")
    muon_momentum: float = Field(0.95, ge=0, lt=1, description="optimizer muon: Muon's (Nesterov) momentum")
    min_lr: float = Field(0.0, ge=0, description="learning rate at the last step (cosine, wsd)")
    schedule: Literal["cosine", "wsd", "constant"] = Field("cosine", description="shape after the warmup")
    warmup_steps: int = Field(0, ge=0, description="linear warmup from lr/warmup_steps to lr, at most "
                                                   "warmup_max_fraction of the run's steps")
    warmup_max_fraction: float = Field(0.2, gt=0, le=1, description="cap on the warmup as a share of the run's "
                                                                    "steps, so a short run (a few steps on your "
                                                                    "own data) still reaches its peak lr")
    wsd_decay_fraction: float = Field(0.2, gt=0, le=1, description="share of steps spent decaying in 'wsd'")
    adam_beta1: float = Field(0.9, ge=0, lt=1, description="AdamW beta1")
    adam_beta2: float = Field(0.95, ge=0, lt=1, description="AdamW beta2")
    adam_eps: float = Field(1e-8, gt=0, description="AdamW epsilon")
    weight_decay: float = Field(0.1, ge=0, description="decoupled decay of linear weights (never norms or "
                                                       "embeddings)")
    decay_embeddings_and_norms: bool = Field(
        False, description="weight decay on every parameter (litgpt's default) instead of the linear weights only")
    grad_clip: float = Field(1.0, ge=0, description="max global grad norm; 0 disables clipping")

    seed: int = Field(1234, description="seeds the init, the data order and every RNG")
    precision: Literal["auto", "bf16", "fp32"] = Field("auto", description="auto: bf16 autocast on CUDA, fp32 on CPU")
    # Default off, measured 2026-12-07 on CPU-2c (loaded, both sides interleaved in one run,
    # benchmarks/bench_compile_cpu.py, micro, 16 x 256 tokens, fp32, one thread): the compiled step is 1.26x eager's
    # speed with AdamW and 1.20x with Muon, but compiling with a cold inductor cache cost ~300 s of eager steps'
    # time (break-even ~480 steps), with a warm one ~15-20 s. The demo (400 steps, a fresh clone) would lose; long
    # runs, reruns and GPUs (every shipped chinchilla config sets it) gain.
    compile: bool = Field(False, description="torch.compile the decoder backbone and the loss's chunk math (on "
                                             "CPU it pays after a few hundred steps, docs/BENCHMARKS.md)")
    attn_implementation: Literal[ATTENTION_IMPLEMENTATIONS] = Field(  # type: ignore[valid-type]
        "sdpa", description="transformers attention backend")
    activation_checkpointing: bool = Field(False, description="recompute activations in backward (less memory)")
    distributed: Literal["ddp", "fsdp2"] = Field(
        "ddp", description="under torchrun: ddp replicates the model on every process; fsdp2 shards parameters, "
                           "gradients and optimizer state (for models whose training state does not fit one device)")

    early_stop_patience: int | None = Field(
        None, gt=0, description="stop once val/loss has not improved for this many evaluations in a row "
                                "(eval_interval apart); final/ then holds the best evaluated weights. Default: off")
    early_stop_min_delta: float = Field(0.0, ge=0, description="with early_stop_patience: a val/loss counts as an "
                                                               "improvement only when below the best by more than this")

    log_interval: int = Field(10, gt=0, description="steps between train-metric records")
    eval_interval: int = Field(200, gt=0, description="steps between val loss / bits-per-byte evaluations")
    save_interval: int = Field(1000, gt=0, description="steps between step_<N>/ checkpoints")
    keep_last_k: int = Field(3, gt=0, description="step checkpoints kept (final/ is always kept)")
    tensorboard: bool = Field(True, description="also log to <run>/tensorboard/")
    wandb_project: str | None = Field(None, description="log to Weights & Biases (must be installed)")

    @model_validator(mode="after")
    def _check_settings(self) -> "TrainerConfig":
        if self.min_lr > self.lr:
            raise ValueError(f"min_lr ({self.min_lr}) exceeds lr ({self.lr})")
        if self.optimizer == "muon" and self.distributed == "fsdp2":
            raise ValueError("optimizer muon needs whole matrices to orthogonalise, and fsdp2 shards them; use "
                             "distributed: ddp (every shipped architecture fits one device) or optimizer: adamw")
        return self
