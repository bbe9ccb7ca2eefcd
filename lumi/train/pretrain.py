"""Stage 40: pretrain a LLaMA-style model on packed data (``lumi pretrain``).

One optimizer step consumes ``micro_batch_size x grad_accumulation x world_size`` rows (the global batch); the loss
of a step is the exact mean over every scored token of the global batch (each micro-batch's summed loss is divided
by the step's token count before backward), so changing the accumulation split does not change the objective.

Checkpoints go to ``<output-dir>/<name>/step_<N>/`` every ``save_interval`` steps (the last ``keep_last_k`` kept)
and ``final/`` at the end. ``--resume auto`` continues from the newest one and, on CPU, reproduces the uninterrupted
run's losses bit for bit: model, optimizer, scheduler, RNG states and the data position are all restored, and
evaluation draws no random numbers. SIGINT/SIGTERM finish the current step, save a checkpoint and exit with
128 + the signal number; a non-finite loss or gradient stops the run before the optimizer step, so the newest
checkpoint stays the last good one.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import math
import os
import random
import shutil
import signal
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm
from transformers import LlamaForCausalLM
from transformers.utils import logging as hf_logging

from lumi.config import CONFIG_DIR, config_to_dict
from lumi.errors import LumiError
from lumi.eval.perplexity import evaluate_packed_split
from lumi.model import ArchitectureConfig, build_model, describe, flops_per_token, load_architecture, parameter_counts
from lumi.packed import read_packed_manifest
from lumi.stage import add_common_arguments, stage_config
from lumi.tokenizer import load_sentencepiece
from lumi.train.checkpoint import (FINAL, STATE_FILE, checkpoint_step, load_trainer_state, restore_rng_state,
                                   rng_state, rotate_checkpoints, save_checkpoint, step_checkpoints, step_dir_name)
from lumi.train.config import RESUMABLE_CHANGES, PretrainConfig
from lumi.train.data import BatchStream, MixedRowSampler, PackedSource, open_sources
from lumi.train.loss import causal_lm_loss, count_scored_tokens
from lumi.train.metrics import MetricsLog, peak_flops
from lumi.train.optim import build_optimizer, build_scheduler

log = logging.getLogger(__name__)

DEFAULT_CONFIG = CONFIG_DIR / "pretrain" / "training" / "chinchilla_tiny_500m.json"
CHINCHILLA_TOKENS_PER_PARAM = 20


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


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


class Pretrainer:
    """Owns one training run. The DDP/benchmark hooks are ``train_step`` (one optimizer step on this rank's
    micro-batches), ``evaluate``, ``save`` and the ``rank``/``world_size``/``device`` constructor arguments."""

    def __init__(self, config: PretrainConfig, output_dir: Path, resume: str | None = None, force: bool = False,
                 rank: int = 0, world_size: int = 1, device: torch.device | None = None):
        self.config, self.rank, self.world_size = config, rank, world_size
        hf_logging.disable_progress_bar()  # save_pretrained's per-checkpoint shard bars would break up the step bar
        self.is_main = rank == 0
        self.device = device or default_device()
        self.tokenizer_dir = Path(config.tokenizer_dir)
        self.sources: list[PackedSource] = open_sources(config.data_dirs, self.tokenizer_dir)
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
        self.run_dir = Path(output_dir) / (config.name or self.arch.name)
        self.resolved = {"config": config_to_dict(config), "architecture": self.arch.model_dump(mode="json"),
                         "seq_len": self.seq_len, "global_batch_rows": self.stream.global_batch_rows,
                         "total_steps": self.total_steps}
        self._replaced_run_dir: Path | None = None
        checkpoint = self._checkpoint_to_resume(resume, force)

        self._bf16 = config.precision == "bf16" or (config.precision == "auto" and self.device.type == "cuda")
        if self.device.type == "cuda":
            torch.set_float32_matmul_precision("high")
        random.seed(config.seed)
        np.random.seed(config.seed)
        torch.manual_seed(config.seed)
        if checkpoint is None:
            self.model = build_model(self.arch, config.attn_implementation)
        else:
            self.model = LlamaForCausalLM.from_pretrained(checkpoint, dtype=torch.float32,
                                                          attn_implementation=config.attn_implementation)
        self.model.to(self.device).train()
        if config.activation_checkpointing:
            self.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if config.compile:
            self.model.model.compile()  # the backbone: the loss calls it directly (lumi/train/loss.py)
        self.optimizer = build_optimizer(self.model, config)
        self.scheduler = build_scheduler(self.optimizer, config, self.total_steps)
        self.step, self.tokens_seen = 0, 0
        self.resumed_from = checkpoint
        if checkpoint is not None:
            self._load_state(checkpoint)
        self._stop_signal: int | None = None

    # --- run directory and resume -------------------------------------------------------------------------------

    def _checkpoint_to_resume(self, resume: str | None, force: bool) -> Path | None:
        existing = step_checkpoints(self.run_dir) + ([(-1, self.run_dir / FINAL)]
                                                     if (self.run_dir / FINAL).is_dir() else [])
        if resume is None:
            if existing and not force:
                raise LumiError(f"{self.run_dir}: holds checkpoints of an earlier run; pass --resume auto to "
                                "continue it or --force to start over")
            if self.run_dir.exists() and force:
                self._replaced_run_dir = self.run_dir.with_name(f".{self.run_dir.name}.old-{os.getpid()}")
            return None
        if resume != "auto":
            if not (Path(resume) / STATE_FILE).is_file():
                raise LumiError(f"--resume {resume}: not a training checkpoint ({STATE_FILE} missing)")
            return Path(resume)
        if not existing:
            log.info("--resume auto: no checkpoint in %s, starting from scratch", self.run_dir)
            return None
        # final/ holds the last step of a finished run: resuming from it is a no-op unless the budget grew.
        return max(existing, key=lambda item: checkpoint_step(item[1]))[1]

    def _load_state(self, checkpoint: Path) -> None:
        state, saved = load_trainer_state(checkpoint)
        changed = sorted(key for key in set(saved) | set(self.resolved) if key != "config"
                         and saved.get(key) != self.resolved.get(key))
        changed += sorted(key for key in set(saved["config"]) | set(self.resolved["config"])
                          if key not in RESUMABLE_CHANGES
                          and saved["config"].get(key) != self.resolved["config"].get(key))
        if changed:
            raise LumiError(f"{checkpoint}: cannot resume, the run's settings changed ({', '.join(changed)}); "
                            "restore them, or start a new run with --force or another name")
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.sampler.load_state_dict(state["data"])
        restore_rng_state(state["rng"])
        self.step, self.tokens_seen = int(state["step"]), int(state["tokens_seen"])
        log.info("resumed from %s at step %d (%d tokens seen)", checkpoint, self.step, self.tokens_seen)

    # --- the hooks ----------------------------------------------------------------------------------------------

    def autocast(self) -> contextlib.AbstractContextManager:
        if self._bf16:
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def train_step(self, micro_batches: list[torch.Tensor]) -> tuple[float, float]:
        """Forward/backward over this rank's micro-batches and one optimizer step; returns (loss, grad norm).

        Under DDP the scored-token count must be summed over ranks, and gradient sync skipped on all but the last
        micro-batch; everything else is rank-agnostic.
        """
        scored = max(sum(count_scored_tokens(b) for b in micro_batches), 1)
        step_nats = torch.zeros((), device=self.device)
        for batch in micro_batches:
            with self.autocast():
                nats, _ = causal_lm_loss(self.model, batch.to(self.device, non_blocking=True),
                                         document_masking=self.config.document_masking, reduction="sum")
            (nats / scored).backward()
            step_nats += nats.detach()
        loss = float(step_nats) / scored
        max_norm = self.config.grad_clip if self.config.grad_clip > 0 else math.inf
        grad_norm = float(torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm))
        if not (math.isfinite(loss) and math.isfinite(grad_norm)):
            self.optimizer.zero_grad(set_to_none=True)
            newest = step_checkpoints(self.run_dir)
            kept = f"the last good checkpoint is {newest[-1][1]}" if newest else "no checkpoint was saved yet"
            raise LumiError(f"step {self.step + 1}: non-finite training loss ({loss}) or gradient norm "
                            f"({grad_norm}); stopped before updating the weights, {kept}. Lower lr (now "
                            f"{self.config.lr}), raise warmup_steps, or check the data")
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss, grad_norm

    def evaluate(self) -> dict[str, float]:
        """Val loss and bits per byte per data dir and pooled over all of them (always with document masking, the
        metric the evaluation stage reports; see ``lumi.eval.perplexity`` for how bytes are prorated)."""
        metrics: dict[str, float] = {}
        nats = tokens = text_bytes = 0.0
        for source in self.sources:
            if source.val.num_rows == 0:
                continue
            with self.autocast():
                result = evaluate_packed_split(self.model, source.val, batch_size=self.config.micro_batch_size,
                                               max_rows=self.config.eval_max_rows, device=self.device)
            if len(self.sources) > 1:
                metrics.update({f"val/{source.name}/loss": result["loss"],
                                f"val/{source.name}/bpb": result["bits_per_byte"]})
            nats += result["loss"] * result["tokens"]
            tokens += result["tokens"]
            text_bytes += result["bytes"]
        if tokens:
            metrics.update({"val/loss": nats / tokens, "val/perplexity": math.exp(min(nats / tokens, 50.0)),
                            "val/bpb": nats / (math.log(2) * text_bytes)})
        return metrics

    def trainer_state(self) -> dict[str, Any]:
        return {"step": self.step, "tokens_seen": self.tokens_seen, "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "data": self.sampler.state_dict(), "rng": rng_state()}

    def save(self, name: str) -> Path:
        directory = save_checkpoint(self.run_dir / name, self.model, self.tokenizer_dir, self.trainer_state(),
                                    self.resolved, overwrite=name == FINAL)
        for removed in rotate_checkpoints(self.run_dir, self.config.keep_last_k):
            log.debug("removed old checkpoint %s", removed)
        return directory

    # --- the loop -----------------------------------------------------------------------------------------------

    def _on_signal(self, signum: int, frame: Any) -> None:
        if self._stop_signal is not None:
            raise KeyboardInterrupt  # a second signal: stop now, without the checkpoint
        self._stop_signal = signum
        log.warning("%s received: saving a checkpoint after this step", signal.Signals(signum).name)

    def fit(self) -> int:
        """Train to the step budget; returns the process exit status (0, or 128 + signal when stopped by one)."""
        config = self.config
        if self._replaced_run_dir is not None:
            # --force: the old run is set aside and deleted only once this one has finished (as lumi.files does).
            os.replace(self.run_dir, self._replaced_run_dir)
            log.info("--force: the previous run is kept in %s until this one finishes", self._replaced_run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        kept_step = self.step if self.resumed_from is not None else -1  # a fresh run drops any stale records
        metrics = MetricsLog(self.run_dir, kept_step, config.tensorboard and self.is_main,
                             config.wandb_project if self.is_main else None, self.run_dir.name, self.resolved)
        log.info("%s", describe(self.arch, self.seq_len))
        log.info("%s", budget_summary(self.arch, self.total_steps, self.tokens_per_step))
        log.info("data: %s", ", ".join(f"{s.path} ({s.train.num_rows} rows, weight {w:.3f})"
                                       for s, w in zip(self.sources, self.sampler.weights)))
        flops = flops_per_token(self.arch, self.seq_len)
        peak = peak_flops(self.device)
        previous = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
        interval_nats = interval_tokens = interval_time = 0.0
        start_time = time.perf_counter()
        try:
            if self.step == 0 and self.is_main:
                metrics.log(0, self.evaluate())
            with tqdm(total=self.total_steps, initial=self.step, desc=f"pretrain {self.run_dir.name}",
                      unit="step", disable=not self.is_main or None, dynamic_ncols=True) as bar:
                while self.step < self.total_steps:
                    micro_batches = self.stream.next_step()
                    lr = self.scheduler.get_last_lr()[0]
                    tick = time.perf_counter()
                    loss, grad_norm = self._guarded_step(micro_batches)
                    interval_time += time.perf_counter() - tick
                    self.step += 1
                    self.tokens_seen += self.tokens_per_step
                    interval_nats += loss * self.tokens_per_step
                    interval_tokens += self.tokens_per_step
                    bar.update(1)
                    if self.step % config.log_interval == 0 or self.step == self.total_steps:
                        record = {"train/loss": interval_nats / interval_tokens, "train/lr": lr,
                                  "train/grad_norm": grad_norm, "train/tokens": self.tokens_seen,
                                  "train/tok_per_s": interval_tokens / interval_time,
                                  "time/elapsed_s": time.perf_counter() - start_time}
                        if peak:
                            record["train/mfu"] = flops * record["train/tok_per_s"] / (peak * self.world_size)
                        if self.is_main:
                            metrics.log(self.step, record)
                        status = {"loss": f"{record['train/loss']:.4f}", "lr": f"{lr:.2e}",
                                  "tok/s": f"{record['train/tok_per_s']:,.0f}",
                                  **({"mfu": f"{record['train/mfu']:.1%}"} if peak else {})}
                        bar.set_postfix(status, refresh=False)
                        if bar.disable and self.is_main:  # no terminal (a log file): one line per interval
                            log.info("step %d/%d %s", self.step, self.total_steps,
                                     " ".join(f"{k} {v}" for k, v in status.items()))
                        interval_nats = interval_tokens = interval_time = 0.0
                    if self.is_main and (self.step % config.eval_interval == 0 or self.step == self.total_steps):
                        mix = {f"data/{s.name}/share": share for s, share in zip(self.sources,
                                                                                 self.sampler.realized_mix())}
                        metrics.log(self.step, {**self.evaluate(), **mix})
                    if self._stop_signal is not None and self.step < self.total_steps:
                        if self.is_main:
                            saved = self.save(step_dir_name(self.step))
                            print(f"stopped by {signal.Signals(self._stop_signal).name} after step {self.step}; "
                                  f"checkpoint saved to {saved}; continue with --resume auto")
                        return 128 + self._stop_signal
                    if self.is_main and self.step % config.save_interval == 0 and self.step < self.total_steps:
                        self.save(step_dir_name(self.step))
            if self.is_main:
                final = self.save(FINAL)
                epochs = ", ".join(f"{s.name}: {share:.3f} of rows, {epochs:.2f} epochs" for s, share, epochs in
                                   zip(self.sources, self.sampler.realized_mix(), self.sampler.epochs()))
                print(f"trained {self.step} steps ({self.tokens_seen:,} tokens; {epochs}); final model in {final}")
            if self._replaced_run_dir is not None:
                shutil.rmtree(self._replaced_run_dir, ignore_errors=True)
            return 0
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            metrics.close()

    def _guarded_step(self, micro_batches: list[torch.Tensor]) -> tuple[float, float]:
        try:
            return self.train_step(micro_batches)
        except torch.OutOfMemoryError:
            raise LumiError(
                f"step {self.step + 1}: {self.device.type.upper()} out of memory with micro_batch_size="
                f"{self.config.micro_batch_size} x seq_len={self.seq_len}; lower micro_batch_size (raise "
                "grad_accumulation to keep the global batch), set activation_checkpointing=true, or pick a smaller "
                "model") from None


# --- command line ------------------------------------------------------------------------------------------------

def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-dirs", nargs="+", type=Path, metavar="DIR",
                        help="packed data directories from stage 30 (overrides the config's data_dirs)")
    parser.add_argument("--data-weights", nargs="+", type=float, metavar="W",
                        help="mixing weight per data dir, in the same order (default: equal)")
    parser.add_argument("--tokenizer-dir", type=Path, help="tokenizer directory from stage 20 (overrides the config)")
    parser.add_argument("--resume", metavar="auto|PATH",
                        help="continue from the newest checkpoint of this run (auto) or from a checkpoint dir")
    parser.add_argument("--max-steps", type=int, help="optimizer steps (overrides max_steps/max_tokens)")
    parser.add_argument("--describe", action="store_true",
                        help="print the architecture, exact parameter counts, FLOPs/token and the token budget, "
                             "then exit without training")
    add_common_arguments(parser, DEFAULT_CONFIG, default_output="checkpoints/pretrain")


def describe_run(config: PretrainConfig) -> str:
    """What ``--describe`` prints: the tokenizer's vocab and the data's row length when they exist, else the
    architecture file's vocab and max_seq_len (said so)."""
    tokenizer_dir = Path(config.tokenizer_dir)
    vocab = tokenizer_vocab_size(tokenizer_dir) if tokenizer_dir.is_dir() else None
    arch = load_architecture(config.model, vocab_size=vocab)
    packed = next((Path(d) for d in config.data_dirs if Path(d).is_dir()), None)
    seq_len = int(read_packed_manifest(packed)["seq_len"]) if packed else arch.max_seq_len
    tokens_per_step = config.micro_batch_size * config.grad_accumulation * seq_len
    lines = [describe(arch, seq_len), budget_summary(arch, total_steps(config, tokens_per_step), tokens_per_step)]
    if vocab is None:
        lines.append(f"(no tokenizer at {tokenizer_dir}: vocab_size from the architecture file)")
    if packed is None:
        lines.append(f"(no packed data yet: rows assumed to be max_seq_len = {seq_len} tokens)")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    flags = {"data_dirs": [str(p) for p in args.data_dirs] if args.data_dirs else None,
             "data_weights": args.data_weights,
             "tokenizer_dir": str(args.tokenizer_dir) if args.tokenizer_dir else None,
             "max_steps": args.max_steps}
    config = stage_config(args, PretrainConfig, flags)
    if args.describe:
        print(describe_run(config))
        return 0
    trainer = Pretrainer(config, args.output_dir, resume=args.resume, force=args.force)
    if trainer.step >= trainer.total_steps:
        print(f"{trainer.run_dir}: already trained {trainer.step} of {trainer.total_steps} steps; nothing to do")
        return 0
    return trainer.fit()
