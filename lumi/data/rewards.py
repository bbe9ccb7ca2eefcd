"""Verifiable rewards for RL (stage 97): named functions of a completion's text and the prompt's reference answer.

``REWARDS`` is the registry a GRPO config names rewards from (``rewards: {"exact_match": 1.0}``: name -> weight; the
reward of a completion is the weighted sum). Every reward is in [0, 1]:

* ``exact_match``: 1 when the completion equals the reference, case and whitespace aside -- the synthetic world's
  answers, and the check stage 95's evaluation scores (``lumi.eval.synthetic_qa``: its ``normalize``).
* ``gsm8k_answer``: 1 when the number on the completion's ``#### N`` line equals the reference's (GSM8K's published
  answer format: the worked solution, then ``#### 72``); commas in numbers are ignored, ``3.0`` equals ``3``. A
  completion without a ``#### N`` line scores 0: the format is part of the task, as in nanochat's and TRL's GSM8K
  rewards.
* ``gsm8k_format``: 1 when the completion ends with a ``#### N`` line at all, right or wrong (a shaping reward that
  teaches the format; weight it below ``gsm8k_answer``).
"""

from __future__ import annotations

import re
from fractions import Fraction
from typing import Callable

from lumi.core.errors import LumiError

Reward = Callable[[str, str], float]

# "#### N" on the last non-empty line; N an integer or decimal with optional sign and thousands commas.
FINAL_ANSWER = re.compile(r"####\s*(-?[\d,]*\.?\d+)\s*$")


def normalize(text: str) -> str:
    """Whitespace collapsed, lower case: what exact match compares."""
    return " ".join(text.split()).lower()


def exact_match(completion: str, reference: str) -> float:
    return float(normalize(completion) == normalize(reference))


def final_number(text: str) -> Fraction | None:
    """The number of a text's ``#### N`` final line (exact: a ``Fraction``), or None without one."""
    match = FINAL_ANSWER.search(text.strip())
    if match is None:
        return None
    try:
        return Fraction(match.group(1).replace(",", ""))
    except ValueError:
        return None


def gsm8k_answer(completion: str, reference: str) -> float:
    expected = final_number(reference)
    if expected is None:
        raise LumiError(f"gsm8k_answer: the reference answer has no '#### N' final line: {reference[-80:]!r}")
    return float(final_number(completion) == expected)


def gsm8k_format(completion: str, reference: str) -> float:
    return float(final_number(completion) is not None)


REWARDS: dict[str, Reward] = {"exact_match": exact_match, "gsm8k_answer": gsm8k_answer, "gsm8k_format": gsm8k_format}


def check_rewards(weights: dict[str, float]) -> dict[str, float]:
    """The config's name -> weight map, names checked against the registry."""
    unknown = sorted(set(weights) - set(REWARDS))
    if unknown or not weights:
        raise ValueError(f"unknown reward {', '.join(unknown) or '(none given)'}; expected names from "
                         f"{', '.join(REWARDS)}")
    return weights


def score(completion: str, reference: str, weights: dict[str, float]) -> dict[str, float]:
    """Each named reward of a completion, and their weighted sum under ``"reward"``."""
    values = {name: REWARDS[name](completion, reference) for name in weights}
    values["reward"] = sum(weights[name] * value for name, value in values.items())
    return values
