"""Generation smoke checks: greedy and sampled continuations of fixed prompts, described only by what can be measured.

All outputs of a run go through the shared generation engine (``lumi.generation``, the one the server uses) at once.

Per output: did it stop at a stop token (EOS, plus ``<|im_end|>`` for chat prompts) before ``max_new_tokens``, its
length in tokens, and its repeated n-gram rate (the share of its token n-grams that repeat an earlier one: 0 for no
repetition, close to 1 for a loop). No invented quality score.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import numpy as np
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from lumi.core.config import strip_comments
from lumi.core.errors import LumiError
from lumi.core.files import read_json
from lumi.core.special_tokens import IM_END_TOKEN, IM_START_TOKEN
from lumi.eval.loglikelihood import encode
from lumi.formats.model_io import context_length
from lumi.generation.engine import Engine
from lumi.generation.sampling import SamplingParams

PromptFormat = Literal["plain", "chat"]


def load_prompts(path: str | Path) -> dict[str, list[str]]:
    """``{category: [prompt, ...]}`` (keys starting with ``_`` are comments)."""
    data = strip_comments(read_json(path, what="prompts file"))
    if not isinstance(data, dict) or not data:
        raise LumiError(f"{path}: expected a JSON object mapping category -> list of prompts")
    for category, prompts in data.items():
        if not isinstance(prompts, list) or not prompts or not all(isinstance(p, str) and p for p in prompts):
            raise LumiError(f"{path}: category {category!r} must be a non-empty list of non-empty strings")
    return data


def repeated_ngram_rate(tokens: list[int], n: int) -> float:
    """1 - distinct n-grams / n-grams (0.0 when the output is shorter than n)."""
    ngrams = [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]
    return 1.0 - len(set(ngrams)) / len(ngrams) if ngrams else 0.0


def format_prompt(tokenizer: PreTrainedTokenizerBase, prompt: str, prompt_format: PromptFormat) -> str:
    """Plain prompts go in as they are; chat prompts become one user turn and an open assistant turn, through the
    tokenizer's chat template when it has one, else the project's ChatML layout (``lumi.core.special_tokens``)."""
    if prompt_format == "plain":
        return prompt
    if tokenizer.chat_template:
        return tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                             add_generation_prompt=True)
    return f"{IM_START_TOKEN}user\n{prompt}{IM_END_TOKEN}\n{IM_START_TOKEN}assistant\n"


def stop_token_ids(tokenizer: PreTrainedTokenizerBase, prompt_format: PromptFormat) -> list[int]:
    ids = [tokenizer.eos_token_id]
    if prompt_format == "chat":
        im_end = tokenizer.convert_tokens_to_ids(IM_END_TOKEN)
        if im_end is not None and im_end != tokenizer.unk_token_id:
            ids.append(im_end)
    return ids


GREEDY = SamplingParams(temperature=0)


def generate_all(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompt_ids: list[list[int]],
                 params: list[SamplingParams], stop_ids: list[int], max_new_tokens: int,
                 max_batch: int) -> list[list[int]]:
    """New token ids per prompt (stop token included when reached), all prompts through the shared generation
    engine at once: continuous batching over ``max_batch`` KV-cache slots, each request with its own
    ``SamplingParams`` (greedy: ``model.generate(do_sample=False)``'s tokens exactly; sampled: its own seed)."""
    if not prompt_ids:
        return []
    context = min(context_length(model), max(map(len, prompt_ids)) + max_new_tokens)  # the KV cache holds no more
    engine = Engine(model, tokenizer, max_batch=max_batch, context=context)
    requests = [(ids, request.model_copy(update={"max_tokens": max_new_tokens})) for ids, request in
                zip(prompt_ids, params, strict=True)]
    return [completion.token_ids for completion in engine.run_all(requests, stop_ids=set(stop_ids))]


def run_generation(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: dict[str, list[str]],
                   prompt_format: PromptFormat, max_new_tokens: int, greedy: bool, samples_per_prompt: int,
                   sampling: dict[str, Any], repetition_ngram: int, seed: int,
                   max_batch: int = 8) -> tuple[list[dict], dict[str, Any]]:
    """All outputs (one record each) and a summary per mode (greedy / sample) and per category. Sample ``i`` of
    every prompt is seeded ``seed + i`` (reproducible); each prompt is cut from the left to leave room for
    ``max_new_tokens``."""
    room = context_length(model) - max_new_tokens
    if room < 1:
        raise LumiError(f"generation: max_new_tokens={max_new_tokens} leaves no room for a prompt in the model's "
                        f"context of {context_length(model)} tokens")
    stop_ids = stop_token_ids(tokenizer, prompt_format)
    modes = ([("greedy", GREEDY)] if greedy else []) + [("sample", SamplingParams(**sampling))] * samples_per_prompt
    runs = []  # (category, prompt, mode, prompt ids, params) in output order
    for category, category_prompts in prompts.items():
        for prompt in category_prompts:
            prompt_ids = encode(tokenizer, format_prompt(tokenizer, prompt, prompt_format))[-room:]
            for sample_index, (mode, params) in enumerate(modes):
                runs.append((category, prompt, mode, prompt_ids,
                             params if mode == "greedy" else params.model_copy(update={"seed": seed + sample_index})))
    generated = generate_all(model, tokenizer, [run[3] for run in runs], [run[4] for run in runs], stop_ids,
                             max_new_tokens, max_batch)
    outputs = []
    for (category, prompt, mode, _, _), new_ids in zip(runs, generated):
        stopped = bool(new_ids) and new_ids[-1] in stop_ids
        content = new_ids[:-1] if stopped else new_ids
        outputs.append({"category": category, "prompt": prompt, "mode": mode,
                        "text": tokenizer.decode(content, skip_special_tokens=True),
                        "stopped_at_eos": stopped, "num_tokens": len(content),
                        "repeated_ngram_rate": repeated_ngram_rate(content, repetition_ngram)})
    return outputs, summarize_generations(outputs, repetition_ngram)


def summarize_generations(outputs: list[dict], repetition_ngram: int) -> dict[str, Any]:
    def stats(records: list[dict]) -> dict[str, float]:
        return {"outputs": len(records),
                "stop_rate": float(np.mean([r["stopped_at_eos"] for r in records])),
                "mean_tokens": float(np.mean([r["num_tokens"] for r in records])),
                "mean_repeated_ngram_rate": float(np.mean([r["repeated_ngram_rate"] for r in records]))}

    summary: dict[str, Any] = {"repetition_ngram": repetition_ngram, "modes": {}}
    for mode in dict.fromkeys(r["mode"] for r in outputs):
        records = [r for r in outputs if r["mode"] == mode]
        summary["modes"][mode] = {"all": stats(records), "by_category": {
            category: stats([r for r in records if r["category"] == category])
            for category in dict.fromkeys(r["category"] for r in records)}}
    return summary
