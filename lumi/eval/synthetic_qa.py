"""Exact-match question answering on the synthetic world's held-out (or validation) facts: the SFT skill measured.

Each held-out fact is asked with each of its relation's held-out question wordings (never in the SFT data nor in the
corpus); the prompt goes through the model's chat template (one user turn, an open assistant turn), the answer is
greedy until an end-of-turn or EOS token, and it counts when it equals the fact's canonical statement (case and
surrounding whitespace aside). With the pretrained model's ``synthetic_cloze`` records (``--compare``), the facts it
knew -- its cloze right -- are the denominator of ``known_facts.share_answered``: what SFT turned into answers.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from lumi.data.synthetic import UNHELPFUL, SyntheticSourceConfig
from lumi.eval.generation import GREEDY, format_prompt, generate_all, stop_token_ids
from lumi.eval.loglikelihood import encode
from lumi.eval.scoring import mean_and_stderr
from lumi.formats.records import read_json_lines

SPLITS = ("heldout", "validation", "train")
REFUSALS = frozenset(" ".join(text.split()).lower() for text in UNHELPFUL)


def qa_items(world_config: SyntheticSourceConfig, split: str = "heldout") -> list[dict[str, Any]]:
    """One item per (fact, question wording) of the split; ``fact`` indexes ``split_facts`` -- the index of the
    fact's ``synthetic_cloze`` item (its id is ``relation/fact``)."""
    world = world_config.world()
    return [{"id": f"{fact.relation}/{index}/{wording}", "fact": f"{fact.relation}/{index}",
             "relation": fact.relation, "prompt": question.format(s=fact.subject), "answer": world.statement(fact)}
            for index, fact in enumerate(world.split_facts(split))  # type: ignore[arg-type]
            for wording, question in enumerate(world.questions(fact.relation, split))]  # type: ignore[arg-type]


def normalize(text: str) -> str:
    return " ".join(text.split()).lower()


def greedy_answers(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: list[str],
                   max_new_tokens: int, batch_size: int) -> list[str]:
    """Greedy chat answers through the shared generation engine: all prompts at once, continuously batched over
    ``batch_size`` KV-cache slots (no padding; the tokens ``model.generate(do_sample=False)`` gives)."""
    stop_ids = stop_token_ids(tokenizer, "chat")
    prompt_ids = [encode(tokenizer, format_prompt(tokenizer, prompt, "chat")) for prompt in prompts]
    rows = generate_all(model, tokenizer, prompt_ids, [GREEDY] * len(prompt_ids), stop_ids, max_new_tokens,
                        batch_size)
    return [tokenizer.decode(row[:-1] if row and row[-1] in stop_ids else row, skip_special_tokens=True)
            for row in rows]


def known_facts(cloze_samples: Path) -> set[str]:
    """Ids of the facts whose cloze the earlier (pretrained) model got right, from its samples file."""
    return {record["id"] for record in read_json_lines(cloze_samples, "cloze samples") if record.get("acc") == 1.0}


def evaluate_synthetic_qa(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, world: SyntheticSourceConfig,
                          split: str, max_new_tokens: int, batch_size: int, max_items: int | None,
                          known: set[str] | None) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    items = qa_items(world, split)[:max_items] if max_items else qa_items(world, split)
    answers = greedy_answers(model, tokenizer, [item["prompt"] for item in items], max_new_tokens, batch_size)
    records, by_relation = [], defaultdict(list)
    for item, answer in zip(items, answers):
        correct = float(normalize(answer) == normalize(item["answer"]))
        records.append({**item, "output": answer, "exact_match": correct,
                        "refused": float(normalize(answer) in REFUSALS)})
        by_relation[item["relation"]].append(correct)
    summary: dict[str, Any] = {
        "split": split, "num_items": len(records),
        "exact_match": mean_and_stderr([r["exact_match"] for r in records]),
        # the synthetic world's unhelpful answers (DPO's rejected side): preference tuning must not raise this
        "refusal_rate": mean_and_stderr([r["refused"] for r in records]),
        "exact_match_by_relation": {name: mean_and_stderr(values) for name, values in sorted(by_relation.items())}}
    if known is not None:
        asked = [r for r in records if r["fact"] in known]
        summary["known_facts"] = {"facts_known": len({r["fact"] for r in asked}), "items": len(asked),
                                  "share_answered": (sum(r["exact_match"] for r in asked) / len(asked)
                                                     if asked else None)}
    return summary, records
