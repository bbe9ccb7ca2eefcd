"""The training loop every trainer shares; what differs per stage is its objective (``lumi.train.objectives``).

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

import contextlib
import logging
import math
import random
import signal
import time
from pathlib import Path
from typing import Any, Callable, TypeVar

import numpy as np
import torch
from tqdm import tqdm
from transformers.utils import logging as hf_logging

from lumi.core.errors import LumiError
from lumi.core.files import OutputClaim, output_path
from lumi.formats.checkpoint import (FINAL, STATE_FILE, check_finite_weights, load_trainer_state,
                                     newest_intact_checkpoint, restore_rng_state, rng_state, rotate_checkpoints,
                                     save_checkpoint, step_checkpoints, step_dir_name, verified_checkpoint)
from lumi.formats.model_card import write_model_card
from lumi.formats.model_io import resolve_device
from lumi.train.config import RESUMABLE_CHANGES, TrainerConfig
from lumi.train.distributed import (barrier, decide_on_main, full_model_state_dict, load_optimizer_state_dict,
                                    max_over_processes, optimizer_state_dict)
from lumi.train.early_stop import WATCHED, EarlyStopping
from lumi.train.metrics import IntervalMeter, MetricsLog, peak_flops, shown_metrics
from lumi.train.objectives.base import Batch, Objective
from lumi.train.optim import schedule_notes
from lumi.train.step import StepResult, TrainStep

log = logging.getLogger(__name__)

T = TypeVar("T")


def run_is_finished(run_dir: Path) -> bool:
    """A run dir holding ``final/`` (written staged, so complete once it has its name)."""
    return (run_dir / FINAL).is_dir()


class Trainer:
    """Owns one training run of one objective. The DDP/benchmark hooks are ``train_step`` (one optimizer step on this
    rank's micro-batches), ``evaluate``, ``save`` and the ``rank``/``world_size``/``device`` constructor arguments;
    the process group itself is set up by the stage (``lumi.train.distributed.init_process_group_from_env``)."""

    def __init__(self, config: TrainerConfig, objective: Objective, output_dir: Path, resume: str | None = None,
                 force: bool = False, rank: int = 0, world_size: int = 1, device: torch.device | None = None):
        self.config, self.objective, self.rank, self.world_size = config, objective, rank, world_size
        hf_logging.disable_progress_bar()  # save_pretrained's per-checkpoint shard bars would break up the step bar
        self.is_main = rank == 0
        self.device = device or resolve_device("auto")
        self.total_steps = objective.total_steps
        # A symlinked run dir is followed: --force sets aside what the link points to and the link stays.
        self.run_dir = output_path(Path(output_dir) / (config.name or objective.run_name))
        self.resolved = objective.resolved
        # Rank 0 holds the run dir until fit() ends: a second run on it is refused, naming this one. A run dir a
        # kill left set aside is moved back first; nothing is deleted until this run has decided to go ahead.
        # The run dir's staging/replace protocol is lumi.core.files.OutputClaim's, as for every stage output: a run
        # dir is complete once it holds final/.
        self._run_dir_lock = contextlib.ExitStack()
        self._claim = OutputClaim(self.run_dir, complete=run_is_finished) if self.is_main else None
        if self._claim is not None:
            self._run_dir_lock.enter_context(self._claim)
        checkpoint, self._replaces_run_dir = decide_on_main(lambda: self._checkpoint_to_resume(resume, force))
        if self._claim is not None:
            # Leftovers of killed runs: checkpoints being staged or deleted go; a finished run a killed --force
            # set aside stays until a run here finishes (the only finished copy until then).
            self._claim.go_ahead(inside=True)

        if self.device.type == "cpu" and config.attn_implementation == "flex_attention":
            raise LumiError("attn_implementation 'flex_attention' trains on GPUs only (torch has no flex-attention "
                            "backward on CPU); use 'sdpa' here")
        if self.device.type == "cuda":
            torch.set_float32_matmul_precision("high")
        random.seed(config.seed)
        np.random.seed(config.seed)
        torch.manual_seed(config.seed)
        self.model = objective.build_model(checkpoint)
        self.model.to(self.device).train()
        self.last_eval: dict[str, float] = {}  # the latest evaluation, shown in the final summary
        self.stepper = TrainStep(objective.loss_module(self.model, config.compile), objective.count, config,
                                 self.total_steps, self.device, world_size)
        self.step, self.tokens_seen = 0, 0
        self.early_stop = (EarlyStopping(config.early_stop_patience, config.early_stop_min_delta)
                           if config.early_stop_patience else None)
        self.resumed_from = checkpoint
        if checkpoint is not None:
            self._load_state(checkpoint)
        self._stop_signal: int | None = None
        self._pending: tuple[int, StepResult, int] | None = None  # a step queued on the device, numbers not read yet

    # --- run directory and resume -------------------------------------------------------------------------------

    def _checkpoint_to_resume(self, resume: str | None, force: bool) -> tuple[Path | None, bool]:
        """(checkpoint to resume from, whether --force replaces an old run); decided on rank 0 only."""
        existing = step_checkpoints(self.run_dir) + ([(-1, self.run_dir / FINAL)]
                                                     if (self.run_dir / FINAL).is_dir() else [])
        if resume is None:
            kept = self._claim.set_aside_copies()
            if kept and not force:
                raise LumiError(f"{self.run_dir}: an interrupted --force run; the finished run it replaces is kept "
                                f"in {kept[0]}: pass --resume auto to continue the new run or --force to start over")
            if existing and not force:
                raise LumiError(f"{self.run_dir}: holds checkpoints of an earlier run; pass --resume auto to "
                                "continue it or --force to start over")
            return None, force and (self.run_dir.exists() or bool(kept))
        if resume != "auto":
            if not (Path(resume) / STATE_FILE).is_file():
                raise LumiError(f"--resume {resume}: not a training checkpoint ({STATE_FILE} missing)")
            return verified_checkpoint(Path(resume)), False
        if not existing:
            log.info("--resume auto: no checkpoint in %s, starting from scratch", self.run_dir)
            return None, False
        # final/ holds the last step of a finished run: resuming from it is a no-op unless the budget grew.
        return newest_intact_checkpoint([path for _, path in existing]), False

    def _load_state(self, checkpoint: Path) -> None:
        state, saved = load_trainer_state(checkpoint, self.objective.config_file)
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
        self.objective.load_state_dict(state["data"])
        if self.early_stop is not None:
            self.early_stop.load_state_dict(state["early_stop"])
        restore_rng_state(state["rng"])
        self.step, self.tokens_seen = int(state["step"]), int(state["tokens_seen"])
        log.info("resumed from %s at step %d (%d tokens seen)", checkpoint, self.step, self.tokens_seen)

    # --- the hooks ----------------------------------------------------------------------------------------------

    def train_step(self, micro_batches: list[Batch]) -> StepResult:
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
            step, result, tokens = self._pending
            self._pending = None
            loss, grad_norm = self._checked(step, result)
            meter.add(loss, grad_norm, tokens)

    def _evaluate_and_log(self, metrics: MetricsLog | None) -> None:
        """Evaluate, log, and count the result towards early stopping (keeping the weights of a new best)."""
        values = self._guarded(self.evaluate)
        self._log(metrics, self.step, values)
        if values and self.is_main:
            self.last_eval = values
            log.info("step %d/%d: %s", self.step, self.total_steps, shown_metrics(values))
        if self.early_stop is None:
            return
        if self.early_stop.update(self.step, values):
            weights = self._whole_weights()  # every process calls it: FSDP2 gathers
            self.early_stop.keep(weights if self.is_main else None)

    def _whole_weights(self) -> dict[str, torch.Tensor]:
        """The model's whole weights on rank 0 (gathered under FSDP2, where every process must call this)."""
        weights = full_model_state_dict(self.stepper.module)
        return self.model.state_dict() if weights is None else weights

    def evaluate(self) -> dict[str, float]:
        """The objective's evaluation, scored through the wrapped module (under FSDP2 only the wrapper holds whole
        weights). Every process runs it; rank 0 logs it."""
        self.model.eval()
        try:
            with torch.no_grad():
                return self.objective.evaluate(lambda batch: self.stepper.forward(self.stepper.to_device(batch),
                                                                                  False))
        finally:
            self.model.train()

    def trainer_state(self) -> dict[str, Any]:
        """What exact resume needs (every process must call it: under FSDP2 the optimizer state is gathered)."""
        return {"step": self.step, "tokens_seen": self.tokens_seen,
                "optimizer": optimizer_state_dict(self.stepper.module, self.stepper.optimizer),
                "scheduler": self.stepper.scheduler.state_dict(), "data": self.objective.state_dict(),
                "rng": rng_state(), **({"early_stop": self.early_stop.state_dict()} if self.early_stop else {})}

    def save(self, name: str, best_weights: bool = False) -> Path:
        """Write checkpoint ``name`` from rank 0 (every process must call it; the others wait until it is written).
        ``best_weights``: the early-stopping best instead of the current weights (``final/`` of such a run)."""
        weights = (self.early_stop.best_weights if best_weights and self.early_stop is not None
                   else full_model_state_dict(self.stepper.module))
        state = self.trainer_state()
        directory = self.run_dir / name
        if self.is_main:
            check_finite_weights(self.model.state_dict() if weights is None else weights, self.step, self.run_dir)
            # final/ gets the hub model card, from the files just written and the run's metrics, under the checksums
            describe = (lambda staging: write_model_card(staging, title=self.run_dir.name)) if name == FINAL else None
            save_checkpoint(directory, lambda staging: self.objective.save_model(staging, self.model, weights), state,
                            self.objective.config_file, self.resolved, overwrite=name == FINAL, describe=describe)
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
            if self._replaces_run_dir:
                aside = self._claim.set_aside()
                log.info("--force: the previous run is kept in %s until this one finishes", aside)
            self.run_dir.mkdir(parents=True, exist_ok=True)
            kept_step = self.step if self.resumed_from is not None else -1  # a fresh run drops any stale records
            metrics = MetricsLog(self.run_dir, kept_step, self.config.tensorboard, self.config.wandb_project,
                                 self.run_dir.name, self.resolved)
        barrier()
        return metrics

    def fit(self) -> int:
        """Train to the step budget; returns the process exit status (0, or 128 + signal when stopped by one)."""
        config, objective = self.config, self.objective
        metrics = self._open_run_dir()
        for line in objective.describe():
            log.info("%s", line)
        for note in schedule_notes(config, self.total_steps):
            log.warning("%s", note)
        if self.world_size > 1:
            log.info("%d processes (%s), %d rows per process per step", self.world_size, config.distributed,
                     config.micro_batch_size * config.grad_accumulation)
        flops = objective.flops_per_token()
        interval_metrics = getattr(objective, "interval_metrics", dict)  # optional: DPO's training rewards
        peak = peak_flops(self.device) if flops else None
        previous = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
        start_time = time.perf_counter()
        first_step = self.step
        try:
            if self.early_stop is not None:
                log.info("early stopping: after %d evaluations without a %s below the best by more than %g; "
                         "final/ then holds the best evaluated weights", self.early_stop.patience, WATCHED,
                         self.early_stop.min_delta)
            if self.step == 0:
                self._evaluate_and_log(metrics)
            meter = IntervalMeter()
            with tqdm(total=self.total_steps, initial=self.step, desc=f"{objective.name} {self.run_dir.name}",
                      unit="step", disable=not self.is_main or None, dynamic_ncols=True) as bar:
                while self.step < self.total_steps and not (self.early_stop and self.early_stop.stopped):
                    micro_batches = objective.next_step()
                    step_tokens = objective.step_tokens(micro_batches)
                    lr = self.stepper.scheduler.get_last_lr()[0]
                    result = self._guarded(self.train_step, micro_batches)
                    self.step += 1
                    self.tokens_seen += step_tokens
                    bar.update(1)
                    # The previous step's numbers are read only now, with this step queued behind it, so the
                    # device never waits for the host; a step whose numbers are read is checked before any save.
                    self._settle(meter)
                    self._pending = (self.step, result, step_tokens)
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
                        interval = interval_metrics()
                        record.update(interval)
                        self._log(metrics, self.step, record)
                        status = {"loss": f"{record['train/loss']:.4f}", "lr": f"{lr:.2e}",
                                  **{name.rsplit("/", 1)[-1]: f"{value:.3f}" for name, value in interval.items()
                                     if not name.endswith("/loss")},
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
                        with meter.paused():
                            self._evaluate_and_log(metrics)
                    if stop_signal and not last:
                        saved = self.save(step_dir_name(self.step))
                        if self.is_main:
                            print(f"stopped by {signal.Signals(stop_signal).name} after step {self.step}; "
                                  f"checkpoint saved to {saved}; continue with --resume auto")
                        return 128 + stop_signal
                    if save_now:
                        with meter.paused():
                            self.save(step_dir_name(self.step))
            final = self.save(FINAL, best_weights=True)
            if self.is_main:
                evaluated = f"; at step {self.step}: {shown_metrics(self.last_eval)}" if self.last_eval else ""
                print(f"trained {self.step} steps ({self.tokens_seen:,} tokens; {objective.summary()}{evaluated}); "
                      f"final model in {final}")
                if self.early_stop is not None:
                    print(f"{'stopped early: ' if self.early_stop.stopped else ''}{final} holds the weights of "
                          f"step {self.early_stop.best_step}, the best {WATCHED} ({self.early_stop.best_loss:.4f})")
                # Finished: only now does the old run go (this process's set-aside copy, or a killed one's).
                self._claim.finish()
            return 0
        finally:
            self._run_dir_lock.close()
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
                f"step {self.step + 1}: {self.device.type.upper()} out of memory with {self.objective.batch_shape()}; "
                "lower micro_batch_size (raise grad_accumulation to keep the global batch), set "
                f"activation_checkpointing=true, {self.objective.oom_advice()}, use distributed=fsdp2 "
                "across several GPUs, or pick a smaller model") from None
