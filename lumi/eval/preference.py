"""Stage 95: how a preference-tuned model scores a stage-85 split against its reference (the SFT model).

Per held-out pair, the answer log-probs of the policy and of the reference (``lumi.lm.preference``, the training
math): implicit rewards ``beta * (log pi - log ref)``, their margin, reward accuracy (chosen reward above rejected),
the policy-vs-reference log-prob win rates (the policy gives the chosen answer a higher log-prob than the reference
does; the rejected one a lower), and how often each model alone prefers the chosen answer. Greedy answers to the
first held-out prompts (the whole multi-turn prompt through the chat template) are returned as samples.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from lumi.core.errors import LumiError
from lumi.data.chat import generation_eos_ids
from lumi.data.preference import pairs_batch, read_dpo_manifest
from lumi.eval.generation import GREEDY, generate_all
from lumi.formats.adapter import adapter_base, is_adapter_dir
from lumi.formats.finetune_data import read_pairs
from lumi.formats.model_dir import require_same_tokenizer
from lumi.formats.model_io import context_length, model_device
from lumi.loading import load_model
from lumi.formats.records import read_json_lines
from lumi.lm.preference import pair_logps


def reference_dir(model_path: Path, reference: str | None) -> Path:
    """The reference model: the configured one, else the base a LoRA adapter records (the SFT model)."""
    if reference is not None:
        return Path(reference)
    if is_adapter_dir(model_path):
        return adapter_base(model_path)
    raise LumiError(f"{model_path}: a full DPO model records no reference; set preference.N.reference_model to the "
                    "SFT model dir")


@torch.no_grad()
def split_logps(model: PreTrainedModel, arrays: dict[str, np.ndarray], pairs: int,
                batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    device = model_device(model)
    chosen, rejected = [], []
    for start in range(0, pairs, batch_size):
        batch = pairs_batch(arrays, range(start, min(start + batch_size, pairs)))
        c, r = pair_logps(model, {k: v.to(device) for k, v in batch.items()})
        chosen.append(c.float().cpu())
        rejected.append(r.float().cpu())
    return torch.cat(chosen), torch.cat(rejected)


@torch.no_grad()
def held_out_answers(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: list[list[dict]],
                     max_new_tokens: int, max_batch: int = 8) -> list[str]:
    """Greedy answers through the shared generation engine (all prompts at once, continuously batched: the tokens
    ``model.generate(do_sample=False)`` gives); each prompt is cut from the left to leave room for the answer."""
    room = max(1, context_length(model) - max_new_tokens)
    prompt_ids = [tokenizer.apply_chat_template(prompt, add_generation_prompt=True,
                                                return_dict=True)["input_ids"][-room:] for prompt in prompts]
    rows = generate_all(model, tokenizer, prompt_ids, [GREEDY] * len(prompt_ids), generation_eos_ids(),
                        max_new_tokens, max_batch)
    return [tokenizer.decode(row, skip_special_tokens=True).strip() for row in rows]


def evaluate_preferences(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, model_path: Path,
                         dpo_dir: str | Path, split: str, reference: str | None, beta: float, batch_size: int,
                         max_pairs: int | None, generate: int, max_new_tokens: int,
                         dtype: str = "auto") -> tuple[dict[str, Any], list[dict[str, Any]]]:
    manifest = read_dpo_manifest(dpo_dir)
    require_same_tokenizer(model_path, manifest["tokenizer_sha256"], dpo_dir,
                           f"rebuild it with --tokenizer-dir {model_path}")
    arrays = read_pairs(dpo_dir, split, model.config.vocab_size)
    pairs = len(arrays["chosen_ids"]) if max_pairs is None else min(max_pairs, len(arrays["chosen_ids"]))
    if pairs == 0:
        raise LumiError(f"{dpo_dir}: split {split!r} has no pairs")
    policy_c, policy_r = split_logps(model, arrays, pairs, batch_size)
    reference_path = reference_dir(Path(model_path), reference)
    reference_model = load_model(reference_path, "reference model", dtype, str(model_device(model)))
    ref_c, ref_r = split_logps(reference_model, arrays, pairs, batch_size)
    del reference_model
    chosen_reward, rejected_reward = beta * (policy_c - ref_c), beta * (policy_r - ref_r)
    summary = {
        "pairs": pairs, "pairs_total": len(arrays["chosen_ids"]), "split": split, "beta": beta,
        "reference": str(reference_path),
        "reward_accuracy": float((chosen_reward > rejected_reward).float().mean()),
        "reward_margin": float((chosen_reward - rejected_reward).mean()),
        "chosen_reward": float(chosen_reward.mean()), "rejected_reward": float(rejected_reward.mean()),
        "chosen_logp_win_rate": float((policy_c > ref_c).float().mean()),
        "rejected_logp_drop_rate": float((policy_r < ref_r).float().mean()),
        "policy_prefers_chosen": float((policy_c > policy_r).float().mean()),
        "reference_prefers_chosen": float((ref_c > ref_r).float().mean()),
    }
    rows = read_json_lines(Path(dpo_dir) / f"{split}.jsonl", "DPO data split")
    samples = [{"id": row["id"], "prompt": row["prompt"], "chosen": row["chosen"], "rejected": row["rejected"],
                "policy_chosen_logp": float(policy_c[i]), "policy_rejected_logp": float(policy_r[i]),
                "reference_chosen_logp": float(ref_c[i]), "reference_rejected_logp": float(ref_r[i])}
               for i, row in enumerate(rows[:pairs])]
    for sample, answer in zip(samples, held_out_answers(model, tokenizer, [r["prompt"] for r in rows[:generate]],
                                                        max_new_tokens)):
        sample["generated"] = answer
    return summary, samples
