"""Stage 40: pretrain a LLaMA-style model on packed data (``lumi pretrain``).

One optimizer step consumes ``micro_batch_size x grad_accumulation x world_size`` rows (the global batch); the loss
of a step is the exact mean over every scored token of the global batch (each micro-batch's summed loss is divided
by the step's token count before backward), so changing the accumulation split does not change the objective.

Checkpoints go to ``<output-dir>/<name>/step_<N>/`` every ``save_interval`` steps (the last ``keep_last_k`` kept)
and ``final/`` at the end. ``--resume auto`` continues from the newest one and, on CPU, reproduces the uninterrupted
run's losses bit for bit: model, optimizer, scheduler, RNG states and the data position are all restored, and
evaluation draws no random numbers. SIGINT/SIGTERM finish the current step, save a checkpoint and exit with
128 + the signal number; a non-finite loss or gradient stops the run, naming the step, before anything of it or
later is saved, so the newest checkpoint stays the last good one.

The host never waits for the device inside a step: a step's loss and gradient norm are copied back behind its own
work and read once the next step is queued (at once before a log record, an evaluation or a checkpoint), so the GPU
is never idle while Python prepares the next batch -- the same freedom a bare training loop that never reads its
loss has.

Under ``torchrun`` every process runs this same loop on its slice of each global batch (``lumi.train.distributed``:
DDP or FSDP2); rank 0 alone decides what to resume, moves an old run aside, logs and writes checkpoints, and the
others wait for it at barriers. A signal received by any process stops all of them after the same step.
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
from typing import Any, Callable, TypeVar

import numpy as np
import torch
from tqdm import tqdm
from transformers import LlamaForCausalLM
from transformers.utils import logging as hf_logging

from lumi.config import CONFIG_DIR, config_to_dict
from lumi.errors import LumiError
from lumi.eval.model_io import resolve_device
from lumi.files import output_lock, output_path, remove_stale_leftovers
from lumi.eval.perplexity import score_packed_split, summarize
from lumi.model import ArchitectureConfig, build_model, describe, flops_per_token, load_architecture, parameter_counts
from lumi.packed import read_packed_manifest
from lumi.stage import add_common_arguments, stage_config
from lumi.tokenizer import load_sentencepiece
from lumi.train.checkpoint import (FINAL, STATE_FILE, load_trainer_state, newest_intact_checkpoint, restore_rng_state,
                                   rng_state, rotate_checkpoints, save_checkpoint, step_checkpoints, step_dir_name,
                                   verified_checkpoint)
from lumi.train.config import RESUMABLE_CHANGES, PretrainConfig
from lumi.train.data import BatchStream, MixedRowSampler, PackedSource, open_sources
from lumi.train.distributed import (barrier, close_process_group, decide_on_main, full_model_state_dict,
                                    init_process_group_from_env, load_optimizer_state_dict, max_over_processes,
                                    optimizer_state_dict)
from lumi.train.metrics import IntervalMeter, MetricsLog, peak_flops
from lumi.train.step import StepResult, TrainStep

log = logging.getLogger(__name__)

T = TypeVar("T")
DEFAULT_CONFIG = CONFIG_DIR / "pretrain" / "training" / "chinchilla_tiny_500m.json"
CHINCHILLA_TOKENS_PER_PARAM = 20


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


def run_dir_of(config: PretrainConfig, output_dir: Path) -> Path:
    """``<output-dir>/<name>``, the run's name defaulting to the architecture's; a symlinked run dir is followed,
    so ``--force`` sets aside what the link points to and the link stays."""
    return output_path(Path(output_dir) / (config.name or load_architecture(config.model).name))


class Pretrainer:
    """Owns one training run. The DDP/benchmark hooks are ``train_step`` (one optimizer step on this rank's
    micro-batches), ``evaluate``, ``save`` and the ``rank``/``world_size``/``device`` constructor arguments; the
    process group itself is set up by ``run`` (``lumi.train.distributed.init_process_group_from_env``)."""

    def __init__(self, config: PretrainConfig, output_dir: Path, resume: str | None = None, force: bool = False,
                 rank: int = 0, world_size: int = 1, device: torch.device | None = None):
        self.config, self.rank, self.world_size = config, rank, world_size
        hf_logging.disable_progress_bar()  # save_pretrained's per-checkpoint shard bars would break up the step bar
        self.is_main = rank == 0
        self.device = device or resolve_device("auto")
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
        self.run_dir = run_dir_of(config, output_dir)
        self.resolved = {"config": config_to_dict(config), "architecture": self.arch.model_dump(mode="json"),
                         "seq_len": self.seq_len, "world_size": world_size,
                         "global_batch_rows": self.stream.global_batch_rows, "total_steps": self.total_steps}
        checkpoint, self._replaced_run_dir = decide_on_main(lambda: self._checkpoint_to_resume(resume, force))

        if self.device.type == "cpu" and config.attn_implementation == "flex_attention":
            raise LumiError("attn_implementation 'flex_attention' trains on GPUs only (torch has no flex-attention "
                            "backward on CPU); use 'sdpa' here")
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
        self.stepper = TrainStep(self.model, config, self.total_steps, self.device, world_size)
        self.step, self.tokens_seen = 0, 0
        self.resumed_from = checkpoint
        if checkpoint is not None:
            self._load_state(checkpoint)
        self._stop_signal: int | None = None
        self._pending: tuple[int, StepResult] | None = None  # a step queued on the device, numbers not read yet

    # --- run directory and resume -------------------------------------------------------------------------------

    def _checkpoint_to_resume(self, resume: str | None, force: bool) -> tuple[Path | None, Path | None]:
        """(checkpoint to resume from, where --force sets the old run aside); decided on rank 0 only."""
        existing = step_checkpoints(self.run_dir) + ([(-1, self.run_dir / FINAL)]
                                                     if (self.run_dir / FINAL).is_dir() else [])
        if resume is None:
            if existing and not force:
                raise LumiError(f"{self.run_dir}: holds checkpoints of an earlier run; pass --resume auto to "
                                "continue it or --force to start over")
            if self.run_dir.exists() and force:
                return None, self.run_dir.with_name(f".{self.run_dir.name}.old-{os.getpid()}")
            return None, None
        if resume != "auto":
            if not (Path(resume) / STATE_FILE).is_file():
                raise LumiError(f"--resume {resume}: not a training checkpoint ({STATE_FILE} missing)")
            return verified_checkpoint(Path(resume)), None
        if not existing:
            log.info("--resume auto: no checkpoint in %s, starting from scratch", self.run_dir)
            return None, None
        # final/ holds the last step of a finished run: resuming from it is a no-op unless the budget grew.
        return newest_intact_checkpoint([path for _, path in existing]), None

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
        load_optimizer_state_dict(self.stepper.module, self.stepper.optimizer, state["optimizer"])
        self.stepper.scheduler.load_state_dict(state["scheduler"])
        self.sampler.load_state_dict(state["data"])
        restore_rng_state(state["rng"])
        self.step, self.tokens_seen = int(state["step"]), int(state["tokens_seen"])
        log.info("resumed from %s at step %d (%d tokens seen)", checkpoint, self.step, self.tokens_seen)

    # --- the hooks ----------------------------------------------------------------------------------------------

    def train_step(self, micro_batches: list[torch.Tensor]) -> StepResult:
        """Forward/backward over this rank's micro-batches and one optimizer step. Returns at once with the step's
        (loss, grad norm) on their way to the host, both global over the processes, so every process takes the same
        decisions from them; ``fit`` reads them a step later and stops at a non-finite one."""
        return self.stepper.step(micro_batches)

    def _checked(self, step: int, result: StepResult) -> tuple[float, float]:
        """A finished step's (loss, grad norm); a non-finite one stops the run before anything of it is saved."""
        loss, grad_norm = result.read()
        if not (math.isfinite(loss) and math.isfinite(grad_norm)):
            newest = step_checkpoints(self.run_dir)
            kept = f"the last good checkpoint is {newest[-1][1]}" if newest else "no checkpoint was saved yet"
            raise LumiError(f"step {step}: non-finite training loss ({loss}) or gradient norm ({grad_norm}); "
                            f"stopped without saving its weights, {kept}. Lower lr (now {self.config.lr}), raise "
                            "warmup_steps, or check the data")
        return loss, grad_norm

    def _settle(self, meter: IntervalMeter) -> None:
        """Wait for the pending step, check it and count it into ``meter``."""
        if self._pending is not None:
            step, result = self._pending
            self._pending = None
            loss, grad_norm = self._checked(step, result)
            meter.add(loss, grad_norm, self.tokens_per_step)

    def evaluate(self) -> dict[str, float]:
        """Val loss and bits per byte per data dir and pooled over all of them (always with document masking, the
        metric the evaluation stage reports; see ``lumi.eval.perplexity`` for how bytes are prorated).

        Scored through the wrapped module with ``lumi.eval.perplexity.score_packed_split``, the loop with which
        ``evaluate_packed_split`` scores the bare model (same rows, same batches, same loss): under FSDP2 only the
        wrapper holds whole weights. Every process runs it; rank 0 logs it.
        """
        metrics: dict[str, float] = {}
        nats = tokens = text_bytes = 0.0
        self.model.eval()
        try:
            for source in self.sources:
                if min(self.config.eval_max_rows, source.val.num_rows) == 0:
                    continue
                score = score_packed_split(
                    source.val, lambda batch: self.stepper.summed_nats(self.stepper.to_device(batch), True),
                    self.config.micro_batch_size, self.config.eval_max_rows)
                if len(self.sources) > 1:
                    result = summarize(score.nats, score.tokens, score.bytes)
                    metrics.update({f"val/{source.name}/loss": result["loss"],
                                    f"val/{source.name}/bpb": result["bits_per_byte"]})
                nats += score.nats
                tokens += score.tokens
                text_bytes += score.bytes
        finally:
            self.model.train()
        if tokens:
            metrics.update({"val/loss": nats / tokens, "val/perplexity": math.exp(min(nats / tokens, 50.0)),
                            "val/bpb": nats / (math.log(2) * text_bytes)})
        return metrics

    def trainer_state(self) -> dict[str, Any]:
        """What exact resume needs (every process must call it: under FSDP2 the optimizer state is gathered)."""
        return {"step": self.step, "tokens_seen": self.tokens_seen,
                "optimizer": optimizer_state_dict(self.stepper.module, self.stepper.optimizer),
                "scheduler": self.stepper.scheduler.state_dict(), "data": self.sampler.state_dict(),
                "rng": rng_state()}

    def save(self, name: str) -> Path:
        """Write checkpoint ``name`` from rank 0 (every process must call it; the others wait until it is written)."""
        weights, state = full_model_state_dict(self.stepper.module), self.trainer_state()
        directory = self.run_dir / name
        if self.is_main:
            save_checkpoint(directory, self.model, self.tokenizer_dir, state, self.resolved,
                            overwrite=name == FINAL, state_dict=weights)
            for removed in rotate_checkpoints(self.run_dir, self.config.keep_last_k):
                log.debug("removed old checkpoint %s", removed)
        barrier()
        return directory

    # --- the loop -----------------------------------------------------------------------------------------------

    def _on_signal(self, signum: int, frame: Any) -> None:
        if self._stop_signal is not None:
            raise KeyboardInterrupt  # a second signal: stop now, without the checkpoint
        self._stop_signal = signum
        log.warning("%s received: saving a checkpoint after this step", signal.Signals(signum).name)

    def _open_run_dir(self) -> MetricsLog | None:
        """Rank 0 sets a --force'd old run aside, creates the run dir and opens the metrics log; the rest wait."""
        metrics = None
        if self.is_main:
            if self._replaced_run_dir is not None:
                # --force: the old run is set aside and deleted only once this one has finished (as lumi.files does).
                os.replace(self.run_dir, self._replaced_run_dir)
                log.info("--force: the previous run is kept in %s until this one finishes", self._replaced_run_dir)
            self.run_dir.mkdir(parents=True, exist_ok=True)
            kept_step = self.step if self.resumed_from is not None else -1  # a fresh run drops any stale records
            metrics = MetricsLog(self.run_dir, kept_step, self.config.tensorboard, self.config.wandb_project,
                                 self.run_dir.name, self.resolved)
        barrier()
        return metrics

    def fit(self) -> int:
        """Train to the step budget; returns the process exit status (0, or 128 + signal when stopped by one)."""
        config = self.config
        metrics = self._open_run_dir()
        log.info("%s", describe(self.arch, self.seq_len))
        log.info("%s", budget_summary(self.arch, self.total_steps, self.tokens_per_step))
        log.info("data: %s", ", ".join(f"{s.path} ({s.train.num_rows} rows, weight {w:.3f})"
                                       for s, w in zip(self.sources, self.sampler.weights)))
        if self.world_size > 1:
            log.info("%d processes (%s), %d rows per process per step", self.world_size, config.distributed,
                     config.micro_batch_size * config.grad_accumulation)
        flops = flops_per_token(self.arch, self.seq_len)
        peak = peak_flops(self.device)
        previous = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
        start_time = time.perf_counter()
        first_step = self.step
        try:
            if self.step == 0:
                self._log(metrics, 0, self._guarded(self.evaluate))
            meter = IntervalMeter()
            with tqdm(total=self.total_steps, initial=self.step, desc=f"pretrain {self.run_dir.name}",
                      unit="step", disable=not self.is_main or None, dynamic_ncols=True) as bar:
                while self.step < self.total_steps:
                    micro_batches = self.stream.next_step()
                    lr = self.stepper.scheduler.get_last_lr()[0]
                    result = self._guarded(self.train_step, micro_batches)
                    self.step += 1
                    self.tokens_seen += self.tokens_per_step
                    bar.update(1)
                    # The previous step's numbers are read only now, with this step queued behind it, so the
                    # device never waits for the host; a step whose numbers are read is checked before any save.
                    self._settle(meter)
                    self._pending = (self.step, result)
                    last = self.step == self.total_steps
                    log_now = self.step % config.log_interval == 0 or last
                    eval_now = self.step % config.eval_interval == 0 or last
                    save_now = self.step % config.save_interval == 0 and not last
                    # Every process stops after the same step, whichever of them the signal reached.
                    stop_signal = max_over_processes(self._stop_signal or 0, self.device)
                    if log_now or eval_now or save_now or stop_signal:
                        self._settle(meter)
                    if log_now:
                        record = {"train/loss": meter.mean_loss(), "train/lr": lr, "train/grad_norm": meter.grad_norm,
                                  "train/tokens": self.tokens_seen, "train/tok_per_s": meter.tokens_per_second(),
                                  "time/elapsed_s": time.perf_counter() - start_time}
                        if peak:
                            record["train/mfu"] = flops * record["train/tok_per_s"] / (peak * self.world_size)
                        self._log(metrics, self.step, record)
                        status = {"loss": f"{record['train/loss']:.4f}", "lr": f"{lr:.2e}",
                                  "tok/s": f"{record['train/tok_per_s']:,.0f}",
                                  **({"mfu": f"{record['train/mfu']:.1%}"} if peak else {})}
                        bar.set_postfix(status, refresh=False)
                        if bar.disable and self.is_main:  # no terminal (a log file): one line per interval
                            seconds_per_step = record["time/elapsed_s"] / (self.step - first_step)
                            eta = tqdm.format_interval(seconds_per_step * (self.total_steps - self.step))
                            log.info("step %d/%d %s eta %s", self.step, self.total_steps,
                                     " ".join(f"{k} {v}" for k, v in status.items()), eta)
                        meter.reset()
                    if eval_now:
                        mix = {f"data/{s.name}/share": share for s, share in zip(self.sources,
                                                                                 self.sampler.realized_mix())}
                        with meter.paused():
                            self._log(metrics, self.step, {**self._guarded(self.evaluate), **mix})
                    if stop_signal and not last:
                        saved = self.save(step_dir_name(self.step))
                        if self.is_main:
                            print(f"stopped by {signal.Signals(stop_signal).name} after step {self.step}; "
                                  f"checkpoint saved to {saved}; continue with --resume auto")
                        return 128 + stop_signal
                    if save_now:
                        with meter.paused():
                            self.save(step_dir_name(self.step))
            final = self.save(FINAL)
            if self.is_main:
                epochs = ", ".join(f"{s.name}: {share:.3f} of rows, {epochs:.2f} epochs" for s, share, epochs in
                                   zip(self.sources, self.sampler.realized_mix(), self.sampler.epochs()))
                print(f"trained {self.step} steps ({self.tokens_seen:,} tokens; {epochs}); final model in {final}")
                if self._replaced_run_dir is not None:
                    shutil.rmtree(self._replaced_run_dir, ignore_errors=True)
            return 0
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            if metrics is not None:
                metrics.close()

    @staticmethod
    def _log(metrics: MetricsLog | None, step: int, values: dict[str, Any]) -> None:
        if metrics is not None:  # rank 0 only
            metrics.log(step, values)

    def _guarded(self, work: Callable[..., T], *args: Any) -> T:
        """Run ``work``, turning running out of device memory into advice on what to lower."""
        try:
            return work(*args)
        except torch.OutOfMemoryError:
            raise LumiError(
                f"step {self.step + 1}: {self.device.type.upper()} out of memory with micro_batch_size="
                f"{self.config.micro_batch_size} x seq_len={self.seq_len} ({self.config.model}); lower "
                "micro_batch_size (raise grad_accumulation to keep the global batch), set "
                "activation_checkpointing=true, re-pack the data with a shorter seq_len, use distributed=fsdp2 "
                "across several GPUs, or pick a smaller model") from None


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
    process = init_process_group_from_env()  # torchrun's RANK/WORLD_SIZE/LOCAL_RANK; one process without them
    run_dir = run_dir_of(config, args.output_dir)
    # Rank 0 holds the run dir for the whole run: a second run on it is refused, naming this one.
    with output_lock(run_dir) if process.is_main else contextlib.nullcontext():
        if process.is_main:
            remove_stale_leftovers(run_dir.parent, run_dir.name)  # an old run a killed --force set aside
            remove_stale_leftovers(run_dir)  # checkpoints a killed save was staging or a rotation deleting
        return _train(config, args, process)


def _train(config: PretrainConfig, args: argparse.Namespace, process: Any) -> int:
    try:
        if not process.is_main:
            logging.getLogger().setLevel(logging.WARNING)  # one copy of the run's log, from rank 0
        trainer = Pretrainer(config, args.output_dir, resume=args.resume, force=args.force, rank=process.rank,
                             world_size=process.world_size, device=process.device)
        if trainer.step >= trainer.total_steps:
            if process.is_main:
                print(f"{trainer.run_dir}: already trained {trainer.step} of {trainer.total_steps} steps; "
                      "nothing to do")
            return 0
        return trainer.fit()
    finally:
        close_process_group()
