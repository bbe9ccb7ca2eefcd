"""GSM8K (openai/gsm8k, configs ``main`` and ``socratic``): ``question``, and ``answer`` = the worked solution with
``<<48/2=24>>`` calculator annotations, then a final line ``#### 72``. For RL the question is the prompt and the
whole answer the reference (the ``gsm8k_answer`` reward compares the ``#### N`` numbers)."""

from __future__ import annotations

from typing import Any

from lumi.data.readers.base import RecordError, text_field
from lumi.data.rewards import final_number

NAME = "gsm8k"


def looks_like(record: dict) -> bool:
    return "question" in record and "answer" in record


def convert(record: Any, index: int) -> dict[str, str]:
    """``{"id", "prompt", "reference"}`` of one record; an answer without its ``#### N`` line is a RecordError."""
    question, answer = text_field(record, "question").strip(), text_field(record, "answer")
    if not question:
        raise RecordError("empty_turn", "empty question")
    if final_number(answer) is None:
        raise RecordError("no_final_answer", f"the answer has no '#### N' final line: {answer[-60:]!r}")
    return {"id": f"{NAME}:{index}", "prompt": question, "reference": answer.strip()}
