"""Pretraining, the first objective: next-token loss over packed rows mixed from one or more stage-30 directories.

One optimizer step consumes ``micro_batch_size x grad_accumulation x world_size`` rows (the global batch); the loss of
a step is the exact mean over every scored token of the global batch, so changing the accumulation split does not
change the objective. Evaluation scores each data dir's val split through the same loss with document masking (the
metric the evaluation stage reports, ``lumi.lm.scoring``), and the pooled val loss again on whole rows
(``val/loss_causal``: documents see the earlier ones of their row, as a peer trained without masking is scored). A checkpoint is a ``save_pretrained`` dir plus the
tokenizer files, and ``pretrain_config.json`` holds the resolved settings.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from pydantic import Field, model_validator
from torch import nn
from transformers import LlamaForCausalLM, PreTrainedModel

from lumi.core.config import config_to_dict
from lumi.core.errors import LumiError
from lumi.core.special_tokens import PAD_ID
from lumi.data.packed_stream import BatchStream, MixedRowSampler, PackedSource, open_sources
from lumi.formats.checkpoint import PRETRAIN_CONFIG_FILE, save_pretrained_with_tokenizer
from lumi.formats.lineage import artifact_worlds, write_lineage
from lumi.formats.tokenizer import load_hf_tokenizer, load_sentencepiece
from lumi.lm.loss import scored_target_mask, summed_nats
from lumi.lm.scoring import bits_per_byte, perplexity, score_packed_split, summarize
from lumi.loading import load_model
from lumi.model import ArchitectureConfig, build_model, describe, flops_per_token, load_architecture, parameter_counts
from lumi.train.config import TrainerConfig

CHINCHILLA_TOKENS_PER_PARAM = 20


class PretrainConfig(TrainerConfig):
    """Stage 40 (``config/pretrain/training/*.json``, ``config/demo/pretrain.json``): the shared trainer part plus
    the model, the packed data and the token budget."""

    model: str = Field(min_length=1, description="architecture name (config/architectures/<name>.json) or JSON path")
    data_dirs: list[str] = Field(default_factory=list, description="packed data directories (stage 30)")
    data_weights: list[float] | None = Field(None, description="mixing weights, one per data dir (default: equal)")
    tokenizer_dir: str = Field("out/tokenizer", description="stage 20 output; its files are copied into checkpoints")
    max_tokens: int | None = Field(None, gt=0, description="token budget, rounded down to whole optimizer steps "
                                                           "(max_steps wins when both are set)")
    document_masking: bool = Field(True, description="packed documents never attend to each other (false only "
                                                     "for ablations)")
    eval_max_rows: int = Field(256, gt=0, description="val rows evaluated per data dir")

    @model_validator(mode="after")
    def _check(self) -> "PretrainConfig":
        if self.max_steps is None and self.max_tokens is None:
            raise ValueError("set max_steps or max_tokens")
        if self.data_weights is not None:
            if len(self.data_weights) != len(self.data_dirs):
                raise ValueError(f"{len(self.data_weights)} data_weights for {len(self.data_dirs)} data_dirs")
            if any(w < 0 for w in self.data_weights) or sum(self.data_weights) <= 0:
                raise ValueError("data_weights must be >= 0 with a positive sum")
        return self


def tokenizer_vocab_size(tokenizer_dir: Path) -> int:
    """The model's vocabulary is exactly the tokenizer's (integrity and special ids checked on load)."""
    return load_sentencepiece(tokenizer_dir).get_piece_size()


def total_steps(config: PretrainConfig, tokens_per_step: int) -> int:
    if config.max_steps is not None:
        return config.max_steps
    steps = config.max_tokens // tokens_per_step
    if steps == 0:
        raise LumiError(f"max_tokens={config.max_tokens} is less than one step ({tokens_per_step} tokens)")
    return steps


def budget_summary(arch: ArchitectureConfig, steps: int, tokens_per_step: int) -> str:
    params = parameter_counts(arch)["total"]
    tokens = steps * tokens_per_step
    return (f"budget: {steps:,} steps x {tokens_per_step:,} tokens = {tokens:,} tokens "
            f"({tokens / params:.1f} tokens/param; Chinchilla-optimal {CHINCHILLA_TOKENS_PER_PARAM} tokens/param "
            f"= {CHINCHILLA_TOKENS_PER_PARAM * params:,} tokens)")


class PackedLMLoss(nn.Module):
    """Pretraining's loss module, what DDP/FSDP2 wrap: summed nats over the scored tokens of a batch of packed rows.
    Training masks documents unless ``document_masking`` is off; evaluation scores in ``eval_mode`` (docs: each
    document alone, the metric; causal: whole rows), set by ``scoring`` around a pass of the val rows, so both
    modes go through the wrapped module (under FSDP2 only the wrapper holds whole weights)."""

    def __init__(self, model: LlamaForCausalLM, document_masking: bool = True, compile_chunks: bool = False):
        super().__init__()
        self.model, self.document_masking, self.compile_chunks = model, document_masking, compile_chunks
        self.eval_mode = "docs"

    @contextmanager
    def scoring(self, mode: str) -> Iterator[None]:
        self.eval_mode = mode
        try:
            yield
        finally:
            self.eval_mode = "docs"

    def forward(self, input_ids: torch.LongTensor, training: bool) -> torch.Tensor:
        masking = self.document_masking if training else self.eval_mode == "docs"
        return summed_nats(self.model, input_ids, document_masking=masking, compile_chunks=self.compile_chunks)


def scored_tokens(input_ids: torch.LongTensor) -> torch.Tensor:
    """Targets a batch of packed rows scores, on the device (what pretraining's summed loss is averaged over)."""
    return scored_target_mask(input_ids).sum()


class PretrainObjective:
    """Packed rows in, next-token loss out (see the module docstring); an ``lumi.train.objectives.base.Objective``."""

    name = "pretrain"
    config_file = PRETRAIN_CONFIG_FILE

    def __init__(self, config: PretrainConfig, rank: int = 0, world_size: int = 1):
        self.config = config
        self.tokenizer_dir = Path(config.tokenizer_dir)
        self.sources: list[PackedSource] = open_sources(config.data_dirs, self.tokenizer_dir)
        self.worlds = set().union(*(artifact_worlds(source.path) for source in self.sources))  # recorded per checkpoint
        if len(self.worlds) > 1:
            raise LumiError(f"{', '.join(str(s.path) for s in self.sources)}: packed data of {len(self.worlds)} "
                            "different synthetic worlds; pretrain on one world's data (real text, of no world, mixes "
                            "with any)")
        self.seq_len = self.sources[0].train.seq_len
        self.arch = load_architecture(config.model, vocab_size=tokenizer_vocab_size(self.tokenizer_dir))
        if self.seq_len > self.arch.max_seq_len:
            raise LumiError(f"{self.sources[0].path}: rows of {self.seq_len} tokens exceed the model's max_seq_len "
                            f"{self.arch.max_seq_len} ({config.model}); re-pack with a shorter seq_len")
        weights = config.data_weights or [1.0] * len(self.sources)
        self.sampler = MixedRowSampler([s.train.num_rows for s in self.sources], weights, config.seed)
        self.stream = BatchStream(self.sources, self.sampler, config.micro_batch_size, config.grad_accumulation,
                                  rank, world_size)
        self.tokens_per_step = self.stream.global_batch_rows * self.seq_len
        self.total_steps = total_steps(config, self.tokens_per_step)
        self.run_name = self.arch.name
        self.resolved = {"config": config_to_dict(config), "architecture": self.arch.model_dump(mode="json"),
                         "seq_len": self.seq_len, "world_size": world_size,
                         "global_batch_rows": self.stream.global_batch_rows, "total_steps": self.total_steps}

    def build_model(self, checkpoint: Path | None) -> PreTrainedModel:
        if checkpoint is None:
            return build_model(self.arch, self.config.attn_implementation)
        return load_model(checkpoint, "checkpoint to resume from", attn_implementation=self.config.attn_implementation,
                          adapter="refuse", trainable=True)

    def loss_module(self, model: PreTrainedModel, compile: bool) -> nn.Module:
        self.loss = PackedLMLoss(model, self.config.document_masking, compile_chunks=compile)
        return self.loss

    def count(self, batch: torch.LongTensor) -> torch.Tensor:
        return scored_tokens(batch)

    def next_step(self) -> list[torch.Tensor]:
        return self.stream.next_step()

    def step_tokens(self, micro_batches: list[torch.Tensor]) -> int:
        return self.tokens_per_step

    def evaluate(self, score: Callable[[torch.Tensor], torch.Tensor]) -> dict[str, float]:
        """Val loss and bits per byte per data dir and pooled over all of them, and the pooled loss on whole rows
        (``val/loss_causal``), scored with ``lumi.lm.scoring.score_packed_split``, the loop the evaluator's
        ``evaluate_packed_split`` uses on the bare model (same rows, same batches, same loss), and the realized data
        mix once rows have been drawn."""
        metrics: dict[str, float] = {}
        nats = tokens = text_bytes = 0.0
        for source in self.sources:
            if min(self.config.eval_max_rows, source.val.num_rows) == 0:
                continue
            result = score_packed_split(source.val, score, self.config.micro_batch_size, self.config.eval_max_rows)
            if len(self.sources) > 1:
                summary = summarize(result.nats, result.tokens, result.bytes)
                metrics.update({f"val/{source.name}/loss": summary["loss"],
                                f"val/{source.name}/bpb": summary["bits_per_byte"]})
            nats += result.nats
            tokens += result.tokens
            text_bytes += result.bytes
        if tokens:
            metrics.update({"val/loss": nats / tokens, "val/perplexity": perplexity(nats / tokens),
                            "val/bpb": bits_per_byte(nats, text_bytes)})
            with self.loss.scoring("causal"):
                causal = [score_packed_split(source.val, score, self.config.micro_batch_size,
                                             self.config.eval_max_rows) for source in self.sources]
            metrics["val/loss_causal"] = sum(r.nats for r in causal) / sum(r.tokens for r in causal)
        if self.sampler.drawn:
            metrics.update({f"data/{s.name}/share": share
                            for s, share in zip(self.sources, self.sampler.realized_mix())})
        return metrics

    def save_model(self, directory: Path, model: PreTrainedModel, state_dict: dict[str, torch.Tensor] | None) -> None:
        save_pretrained_with_tokenizer(directory, model, self.tokenizer_dir, state_dict)
        write_lineage(directory, self.worlds)

    def state_dict(self) -> dict[str, Any]:
        return self.sampler.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.sampler.load_state_dict(state)

    def describe(self) -> list[str]:
        return [describe(self.arch, self.seq_len), budget_summary(self.arch, self.total_steps, self.tokens_per_step),
                "data: " + ", ".join(f"{s.path} ({s.train.num_rows} rows, weight {w:.3f})"
                                     for s, w in zip(self.sources, self.sampler.weights))]

    @torch.no_grad()
    def sample(self, model: PreTrainedModel, prompt_tokens: int = 24, new_tokens: int = 40) -> tuple[str, str]:
        """(prompt, greedy continuation) from the start of the first val row (train when no val): what the model
        writes, shown after training beside its loss."""
        source = self.sources[0]
        split = source.val if source.val.num_rows else source.train
        prompt = torch.from_numpy(split.rows[0][:prompt_tokens].astype("int64"))[None]
        was_training = model.training
        model.eval()
        try:
            ids = model.generate(prompt.to(next(model.parameters()).device), max_new_tokens=new_tokens,
                                 do_sample=False, pad_token_id=PAD_ID)[0, prompt.shape[1]:]
        finally:
            model.train(was_training)
        tokenizer = load_hf_tokenizer(self.tokenizer_dir)
        return (tokenizer.decode(prompt[0].tolist(), skip_special_tokens=True),
                tokenizer.decode(ids.tolist(), skip_special_tokens=True))

    def summary(self) -> str:
        return ", ".join(f"{s.name}: {share:.3f} of rows, {epochs:.2f} epochs" for s, share, epochs in
                         zip(self.sources, self.sampler.realized_mix(), self.sampler.epochs()))

    def flops_per_token(self) -> int | None:
        return flops_per_token(self.arch, self.seq_len)

    def batch_shape(self) -> str:
        return f"micro_batch_size={self.config.micro_batch_size} x seq_len={self.seq_len} ({self.config.model})"

    def oom_advice(self) -> str:
        return "re-pack the data with a shorter seq_len"  # rows are as long as the packed data made them
