"""RL with verifiable rewards (stage 97, GRPO): the shared trainer loop; each step samples ``num_generations``
completions per prompt with the policy on Lumi's own generation engine (``lumi.generation``: continuous batching
over a KV cache), scores them with named rewards (``lumi.data.rewards``), and takes one optimizer step on the
group-relative, clipped policy-gradient loss of ``lumi.lm.grpo``.

By default one update per rollout batch, as TRL's default (``num_iterations=1``): the old-policy log-probs are the
trainer's own forward, detached, on the same tokens, so the ratio is 1 at the update and the engine's sampling
log-probs are never used -- any difference between the engine's numerics and the trainer's forward cannot bias the
loss (the clip fraction, logged, stays 0). With ``num_iterations`` = mu > 1 a rollout batch is used for mu optimizer
steps (TRL's ``num_iterations``, the GRPO paper's mu): its old-policy log-probs are the trainer's forward at sampling
time (before the first of its updates), so the later updates' ratios move and the clip bites. The reference
(``beta > 0`` only; 0 by default, as current practice) is the adapter-disabled policy with LoRA, a frozen copy with
full training.

A step's rows are completions: ``micro_batch_size`` x ``grad_accumulation`` per process, whole groups of
``num_generations`` per process (each process samples and scores its own prompts' groups, so advantages need no
gather). A batch is ``{"input_ids", "completion_mask", "advantages"}`` (prompt + completion, PAD on the right; the
mask marks completion tokens, the stop token included). Every request's sampler is seeded from (seed, step, row of
the global batch), so a resumed run, or one on another number of processes, samples what the uninterrupted one did.
"""

from __future__ import annotations

import hashlib
import math
import time
from pathlib import Path
from typing import Any, Callable, Literal

import torch
from pydantic import Field, field_validator
from torch import nn
from transformers import AutoConfig, AutoTokenizer, PreTrainedModel

from lumi.core.config import config_to_dict
from lumi.core.errors import LumiError
from lumi.core.files import read_json
from lumi.core.special_tokens import PAD_ID
from lumi.data.chat import CHAT_CONFIG, encode_conversation, get_template
from lumi.data.rewards import REWARDS, check_rewards, score
from lumi.data.rl_prompts import PromptSource, load_prompts
from lumi.generation.engine import Engine
from lumi.generation.sampling import SamplingParams
from lumi.lm.grpo import LOSS_TYPES, SCALE_REWARDS, group_advantages, grpo_loss
from lumi.lm.preference import token_logps
from lumi.formats.adapter import base_fingerprint, is_adapter_dir
from lumi.formats.lineage import require_same_world
from lumi.formats.model_dir import open_model_dir
from lumi.train.config import TrainerConfig
from lumi.train.distributed import all_reduce_sum
from lumi.train.finetune import FineTuneObjective, LoraSettings, method_description

GREEDY = SamplingParams(temperature=0.0)


class GRPOConfig(TrainerConfig):
    """Stage 97 (``config/rl/training/*.json``): the shared trainer part plus the start model, prompts, rewards,
    sampling and the loss."""

    model_path: str | None = Field(None, description="the SFT or DPO model dir the policy starts from (a merged/full "
                                                      "save_pretrained dir with its chat tokenizer; an adapter dir "
                                                      "is merged first by lumi grpo); --model-path")
    prompts: list[PromptSource] = Field(min_length=1, description="prompt sources (synthetic world train "
                                                                  "questions, GSM8K records), each with its "
                                                                  "reference answer")
    val_fraction: float = Field(0.1, ge=0, lt=1, description="share of prompts kept for validation (greedy reward "
                                                             "at every eval interval; never trained on)")
    rewards: dict[str, float] = Field({"exact_match": 1.0}, description="reward name -> weight; a completion's "
                                      f"reward is the weighted sum. Names: {', '.join(REWARDS)} "
                                      "(lumi/data/rewards.py)")
    num_generations: int = Field(4, ge=2, description="completions sampled per prompt (the group, G)")
    max_completion_length: int = Field(64, ge=1, description="most tokens per completion (a cut completion "
                                                             "keeps its reward; dr_grpo divides by this)")
    temperature: float = Field(1.0, gt=0, le=2, description="sampling temperature of the rollouts")
    top_p: float = Field(1.0, gt=0, le=1, description="nucleus sampling of the rollouts")
    top_k: int = Field(0, ge=0, description="top-k sampling of the rollouts (0 = off)")
    loss_type: Literal[*LOSS_TYPES] = Field("dapo", description="normalisation: grpo (per-sequence mean, the GRPO "
                                                                "paper), dapo (per-token, TRL's default), dr_grpo "
                                                                "(sum / (completions x max_completion_length))")
    scale_rewards: Literal[*SCALE_REWARDS] = Field("group", description="divide advantages by the group's reward "
                                                                        "std, the batch's, or none (Dr. GRPO)")
    num_iterations: int = Field(1, ge=1, description="optimizer steps per rollout batch (TRL's num_iterations, the "
                                                      "GRPO paper's mu); > 1: the ratio to the sampling policy "
                                                      "is clipped at epsilon")
    epsilon: float = Field(0.2, gt=0, lt=1, description="lower clip range of the policy ratio")
    epsilon_high: float | None = Field(None, gt=0, description="upper clip range (DAPO's clip-higher); None: epsilon")
    beta: float = Field(0.0, ge=0, description="weight of the KL to the frozen start model (0: no reference)")
    method: Literal["lora", "full"] = Field("lora", description="LoRA adapters through PEFT, or every weight")
    lora: LoraSettings = Field(default_factory=LoraSettings, description="LoRA settings (method lora)")
    rollout_slots: int = Field(16, ge=1, description="KV-cache slots of the generation engine: completions "
                                                     "generated at once")
    epochs: float | None = Field(None, gt=0, description="passes over the train prompts (max_steps wins when set)")
    eval_max_prompts: int = Field(64, gt=0, description="val prompts answered greedily at every eval interval")

    @field_validator("rewards")
    @classmethod
    def _known_rewards(cls, rewards: dict[str, float]) -> dict[str, float]:
        return check_rewards(rewards)


def check_policy(model_path: str | Path) -> Path:
    """A chat model dir (SFT or DPO output, or a merged adapter): weights, config and the chat tokenizer files."""
    path = Path(model_path)
    if is_adapter_dir(path):
        raise LumiError(f"{path}: is a LoRA adapter dir; merge it first (lumi merge-lora), or let lumi grpo do it")
    open_model_dir(path, "GRPO policy (the SFT or DPO model)", allow_adapter=False)
    if not (path / CHAT_CONFIG).is_file():
        raise LumiError(f"{path}: no chat tokenizer ({CHAT_CONFIG}); GRPO starts from an SFT or DPO model, not a "
                        "pretrained checkpoint")
    return path


def request_seed(seed: int, step: int, row: int) -> int:
    """The sampler seed of one rollout (``row``: its index in the step's global batch): a keyed hash, the same on
    every machine, after a resume and whichever process samples it."""
    digest = hashlib.blake2b(f"lumi-grpo/{seed}/{step}/{row}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 2


class RolloutStats:
    """Host-side sums of the rollouts since the last log line (rewards, groups, lengths, timings)."""

    NAMES = ("completions", "reward", "reward_sq", "groups", "zero_signal", "length", "cut", "rollout_s",
             "update_s")

    def __init__(self) -> None:
        self.sums = dict.fromkeys(self.NAMES, 0.0)
        self.zero_signal_total = 0
        self.groups_total = 0

    def add(self, **values: float) -> None:
        for name, value in values.items():
            self.sums[name] += value

    def read(self) -> dict[str, float]:
        """Means over every process's completions since the last read, then reset (every process calls it)."""
        stacked = torch.tensor([self.sums[name] for name in self.NAMES] + [1.0], dtype=torch.float64)
        all_reduce_sum(stacked)
        sums = dict(zip((*self.NAMES, "processes"), stacked.tolist()))
        self.sums = dict.fromkeys(self.NAMES, 0.0)
        if sums["completions"] == 0:  # every step since the last read reused a rollout batch (num_iterations > 1)
            return {}
        count = sums["completions"]
        mean = sums["reward"] / count
        seconds = sums["rollout_s"] + sums["update_s"]
        rollout_seconds = sums["rollout_s"] / sums["processes"]  # the processes sample at the same time
        return {"train/reward": mean, "train/reward_std": math.sqrt(max(sums["reward_sq"] / count - mean ** 2, 0.0)),
                "train/zero_signal_groups": sums["zero_signal"] / max(sums["groups"], 1.0),
                "train/completion_length": sums["length"] / count, "train/completions_cut": sums["cut"] / count,
                "rollout/tok_per_s": sums["length"] / max(rollout_seconds, 1e-9),
                "time/rollout_share": sums["rollout_s"] / max(seconds, 1e-9)}


class LossStats:
    """Device-side sums of the loss's KL and clipped tokens since the last log line."""

    def __init__(self) -> None:
        self.sums: torch.Tensor | None = None

    def add(self, terms: dict[str, torch.Tensor]) -> None:
        values = torch.stack([terms["tokens"], terms["kl"], terms["clipped"]]).double()
        self.sums = values if self.sums is None else self.sums + values

    def read(self) -> dict[str, float]:
        if self.sums is None:
            return {}
        sums = all_reduce_sum(self.sums)
        self.sums = None
        tokens, kl, clipped = sums.tolist()
        return {"train/kl": kl / max(tokens, 1.0), "train/clip_fraction": clipped / max(tokens, 1.0)}


class GRPOLoss(nn.Module):
    """What DDP wraps: the summed GRPO loss of a batch of completions (``lumi.lm.grpo.grpo_loss``)."""

    def __init__(self, model: PreTrainedModel, config: GRPOConfig, reference: PreTrainedModel | None):
        super().__init__()
        self.model, self.config, self.reference = model, config, reference
        self.stats = LossStats()

    def reference_logps(self, input_ids: torch.Tensor) -> torch.Tensor | None:
        if self.config.beta == 0:
            return None
        with torch.no_grad():
            if self.reference is not None:
                return token_logps(self.reference, input_ids)
            with self.model.disable_adapter():
                return token_logps(self.model, input_ids)

    def forward(self, batch: dict[str, torch.Tensor], training: bool) -> torch.Tensor:
        logps = token_logps(self.model, batch["input_ids"])
        config = self.config
        old_logps = batch.get("old_logps")  # num_iterations > 1: the policy's at sampling time; else this forward's
        terms = grpo_loss(logps, logps.detach() if old_logps is None else old_logps, batch["advantages"],
                          batch["completion_mask"][:, 1:], config.loss_type, config.epsilon, config.epsilon_high, config.beta,
                          self.reference_logps(batch["input_ids"]), config.max_completion_length)
        if training:
            self.stats.add(terms)
        return terms["loss"]


class GRPOObjective(FineTuneObjective):
    """Prompts in, sampled and scored groups, GRPO loss out; the Objective of ``lumi.train.objectives.base``."""

    name = "grpo"
    config_file = "grpo_config.json"

    def __init__(self, config: GRPOConfig, rank: int = 0, world_size: int = 1):
        if config.model_path is None:
            raise LumiError("lumi grpo needs --model-path (the SFT or DPO model)")
        if config.distributed == "fsdp2":
            raise LumiError("lumi grpo trains with distributed ddp: rollouts need each process's whole weights")
        self.config, self.rank, self.world_size = config, rank, world_size
        self.policy_dir = check_policy(config.model_path)
        require_same_world(self.policy_dir, "the config's RL prompts", config_to_dict(config)["prompts"])
        self.start = self.tokenizer_dir = self.policy_dir  # a checkpoint gets the policy's chat tokenizer
        self.start_purpose = "GRPO policy (the SFT or DPO model)"
        rows = config.micro_batch_size * config.grad_accumulation
        if rows % config.num_generations:
            raise LumiError(f"micro_batch_size x grad_accumulation ({rows}) must be a multiple of num_generations "
                            f"({config.num_generations}): each process samples whole groups")
        self.prompts_per_process = rows // config.num_generations
        self.tokenizer = AutoTokenizer.from_pretrained(str(self.policy_dir))
        chat = read_json(self.policy_dir / CHAT_CONFIG, what="chat template config")
        self.template = get_template(chat["template"], chat.get("system_prompt"))
        prompts = load_prompts(config.prompts, config.val_fraction, config.seed)
        self.train = [self._encoded(item) for item in prompts["train"]]
        self.val = [self._encoded(item) for item in prompts["val"]]
        self.context = int(AutoConfig.from_pretrained(str(self.policy_dir)).max_position_embeddings)
        longest = max(len(item["ids"]) for item in self.train + self.val)
        if longest + config.max_completion_length > self.context:
            raise LumiError(f"a prompt of {longest} tokens + max_completion_length {config.max_completion_length} "
                            f"exceeds the model's context of {self.context}; lower max_completion_length")
        self.plan_steps(len(self.train), self.prompts_per_process, "GRPO")
        if config.max_steps is None:  # epochs count passes over the prompts; each rollout batch makes mu steps
            self.total_steps *= config.num_iterations
        self.run_name = f"grpo_{config.method}"
        self.rollout_step = 0
        self.reused: list[dict[str, torch.Tensor]] | None = None  # the rollout batch of the next num_iterations - 1
        self.reuses_left = 0  # steps (num_iterations > 1)
        self.model: PreTrainedModel | None = None
        self.loss: GRPOLoss | None = None
        self.stats = RolloutStats()
        self._update_started: float | None = None
        self.resolved = {"config": config_to_dict(config), "policy_sha256": base_fingerprint(self.policy_dir),
                         "train_prompts": len(self.train), "val_prompts": len(self.val), "world_size": world_size,
                         "total_steps": self.total_steps}

    def _encoded(self, item: dict[str, str]) -> dict[str, Any]:
        """The prompt as the SFT data encodes a user turn (content never becomes control tokens), assistant open."""
        messages = [{"role": "user", "content": item["prompt"]}]
        return {**item, "ids": encode_conversation(self.tokenizer, messages, self.template, True).input_ids}

    # --- model ---------------------------------------------------------------------------------------------------

    def loss_module(self, model: PreTrainedModel, compile: bool) -> nn.Module:
        device = next(model.parameters()).device
        reference = None
        if self.config.beta > 0 and self.config.method == "full":
            reference = self.load_start().to(device).eval().requires_grad_(False)
        self.model = model
        self.loss = GRPOLoss(model, self.config, reference)
        return self.loss

    def count(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """What the summed loss is averaged over: completions (grpo), completion tokens (dapo), or completions x
        max_completion_length (dr_grpo)."""
        rows = torch.ones_like(batch["advantages"]).sum()
        if self.config.loss_type == "dapo":
            return batch["completion_mask"][:, 1:].sum().to(rows.dtype)
        return rows * (self.config.max_completion_length if self.config.loss_type == "dr_grpo" else 1)

    # --- rollouts ------------------------------------------------------------------------------------------------

    def _generate(self, prompt_ids: list[list[int]], params: list[SamplingParams]) -> list[tuple[list[int], str]]:
        """(token ids with the stop token when reached, answer text) per request, through the generation engine."""
        model = self.model
        was_training = model.training
        context = min(self.context, max(map(len, prompt_ids)) + self.config.max_completion_length)
        engine = Engine(model, self.tokenizer, max_batch=self.config.rollout_slots, context=context)
        try:
            completions = engine.run_all(list(zip(prompt_ids, params)))
        finally:
            model.train(was_training)
        stop_ids = engine.stop_ids
        return [(c.token_ids, self.tokenizer.decode([t for t in c.token_ids if t not in stop_ids],
                                                    skip_special_tokens=True)) for c in completions]

    def next_step(self) -> list[dict[str, torch.Tensor]]:
        """Sample this process's groups with the current policy, score them, and cut the rows into micro-batches
        (or, within a rollout batch's ``num_iterations`` steps, the same micro-batches again)."""
        if self.reuses_left:
            self.reuses_left -= 1
            return self.reused
        started = time.perf_counter()
        self._count_update_time()
        config, group = self.config, self.config.num_generations
        rows = [row for _, row in self.sampler.next_rows(self.global_items)]
        mine = [self.train[row] for row in rows[self.rank * self.prompts_per_process:][:self.prompts_per_process]]
        prompt_ids = [item["ids"] for item in mine for _ in range(group)]
        first_row = self.rank * len(prompt_ids)
        params = [SamplingParams(max_tokens=config.max_completion_length, temperature=config.temperature,
                                 top_p=config.top_p, top_k=config.top_k,
                                 seed=request_seed(config.seed, self.rollout_step, first_row + index))
                  for index in range(len(prompt_ids))]
        completions = self._generate(prompt_ids, params)
        self.rollout_step += 1
        references = [item["reference"] for item in mine for _ in range(group)]
        rewards = torch.tensor([score(text, reference, config.rewards)["reward"]
                                for (_, text), reference in zip(completions, references)])
        advantages, zero_signal = group_advantages(rewards, group, config.scale_rewards)
        lengths = [len(ids) for ids, _ in completions]
        width = max(len(p) + n for p, n in zip(prompt_ids, lengths))
        input_ids = torch.full((len(prompt_ids), width), PAD_ID, dtype=torch.long)
        completion_mask = torch.zeros_like(input_ids)
        for row, (prompt, (ids, _)) in enumerate(zip(prompt_ids, completions)):
            input_ids[row, :len(prompt) + len(ids)] = torch.tensor(prompt + ids)
            completion_mask[row, len(prompt):len(prompt) + len(ids)] = 1
        self.stats.add(completions=len(rewards), reward=float(rewards.sum()), reward_sq=float((rewards ** 2).sum()),
                       groups=len(zero_signal), zero_signal=int(zero_signal.sum()), length=sum(lengths),
                       cut=sum(n >= config.max_completion_length for n in lengths),
                       rollout_s=time.perf_counter() - started)
        self.stats.zero_signal_total += int(zero_signal.sum())
        self.stats.groups_total += len(zero_signal)
        self._update_started = time.perf_counter()
        micro = config.micro_batch_size
        batches = [{"input_ids": input_ids[start:start + micro],
                    "completion_mask": completion_mask[start:start + micro],
                    "advantages": advantages[start:start + micro]} for start in range(0, len(prompt_ids), micro)]
        if config.num_iterations > 1:
            device = next(self.model.parameters()).device
            with torch.no_grad():  # the sampling policy's log-probs, in the mode the loss's forward runs in
                for batch in batches:
                    batch["old_logps"] = token_logps(self.model, batch["input_ids"].to(device)).cpu()
            self.reused, self.reuses_left = batches, config.num_iterations - 1
        return batches

    def _count_update_time(self, restart: bool = False) -> None:
        """Add the time since the last rollout ended (the update) to the stats; ``restart``: count on from now."""
        now = time.perf_counter()
        if self._update_started is not None:
            self.stats.add(update_s=now - self._update_started)
        self._update_started = now if restart else None

    def step_tokens(self, micro_batches: list[dict[str, torch.Tensor]]) -> int:
        return self.world_size * sum(int((b["input_ids"] != PAD_ID).sum()) for b in micro_batches)

    def interval_metrics(self) -> dict[str, float]:
        """Rewards, zero-signal groups, lengths, rollout speed and share, KL and clip fraction since the last log
        line, over every process (every process calls this at each log line)."""
        self._count_update_time(restart=True)  # the step's update has finished: the trainer read its loss
        metrics = self.stats.read()
        if self.loss is not None:
            metrics.update(self.loss.stats.read())
        return metrics

    def evaluate(self, score_batch: Callable[[dict[str, torch.Tensor]], torch.Tensor]) -> dict[str, float]:
        """Greedy answers to the first ``eval_max_prompts`` val prompts: their mean reward (each process answers
        the same prompts)."""
        items = self.val[:self.config.eval_max_prompts]
        if not items or self.model is None:
            return {}
        self._count_update_time()  # evaluation is neither rollout nor update
        greedy = GREEDY.model_copy(update={"max_tokens": self.config.max_completion_length})
        answers = self._generate([item["ids"] for item in items], [greedy] * len(items))
        values = [score(text, item["reference"], self.config.rewards) for (_, text), item in zip(answers, items)]
        metrics = {"val/reward": sum(v["reward"] for v in values) / len(values)}
        for name in self.config.rewards:
            metrics[f"val/{name}"] = sum(v[name] for v in values) / len(values)
        if self.rollout_step:
            self._update_started = time.perf_counter()
        return metrics

    # --- checkpoints and reporting -------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        return {"sampler": self.sampler.state_dict(), "rollout_step": self.rollout_step,
                "zero_signal_groups": self.stats.zero_signal_total, "groups": self.stats.groups_total,
                "reused": self.reused if self.reuses_left else None, "reuses_left": self.reuses_left}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.sampler.load_state_dict(state["sampler"])
        self.rollout_step = int(state["rollout_step"])
        self.stats.zero_signal_total, self.stats.groups_total = int(state["zero_signal_groups"]), int(state["groups"])
        self.reused, self.reuses_left = state.get("reused"), int(state.get("reuses_left", 0))

    def describe(self) -> list[str]:
        config = self.config
        reference = ("none (beta 0)" if config.beta == 0 else
                     "the adapter-disabled policy" if config.method == "lora" else "a frozen copy")
        rewards = ", ".join(f"{name} x{weight:g}" for name, weight in config.rewards.items())
        return [f"GRPO ({config.loss_type}, {method_description(config)}) of {self.policy_dir}: "
                f"{len(self.train)} train prompts, {len(self.val)} val prompts; {self.total_steps} steps of "
                f"{self.global_items} prompts x {config.num_generations} completions (up to "
                f"{config.max_completion_length} tokens, temperature {config.temperature})"
                f"{f', each rollout batch for {config.num_iterations} steps' if config.num_iterations > 1 else ''}"
                f"; rewards: {rewards}; "
                f"reference: {reference}"]

    def summary(self) -> str:
        return (f"{self.sampler.epochs()[0]:.2f} epochs of the RL train prompts; {self.stats.zero_signal_total} of "
                f"{self.stats.groups_total} groups (this process's) had equal rewards: no signal")

    def batch_shape(self) -> str:
        return (f"micro_batch_size={self.config.micro_batch_size} completions x up to prompt + "
                f"{self.config.max_completion_length} tokens")

    def oom_advice(self) -> str:
        return "lower max_completion_length or rollout_slots (the engine's KV cache)"
