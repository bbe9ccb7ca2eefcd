#!/usr/bin/env python
"""The demo's last step: start `lumi serve` on a checkpoint, ask one question through the `openai` client, print the
answer, stop the server. Chat checkpoints (a chat template) get a chat completion, base models a text completion.

    python runs/ask_served_model.py --model-path out/demo/sft/final --question "Where does the baker live?"

Exit status 0 when an answer came back; the server's log is printed if anything fails.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import openai

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lumi.core.errors import LumiError  # noqa: E402
from lumi.serve.server import server_process  # noqa: E402

MODEL = "demo"


def ask(url: str, chat: bool, question: str, max_tokens: int, temperature: float) -> tuple[str, str, int]:
    client = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=120)
    if chat:
        reply = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": question}],
                                               max_tokens=max_tokens, temperature=temperature)
        return reply.choices[0].message.content, reply.choices[0].finish_reason, reply.usage.completion_tokens
    reply = client.completions.create(model=MODEL, prompt=question, max_tokens=max_tokens, temperature=temperature)
    return reply.choices[0].text, reply.choices[0].finish_reason, reply.usage.completion_tokens


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-path", type=Path, required=True)
    parser.add_argument("--question", required=True)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--temperature", type=float, default=0.0)
    args = parser.parse_args()
    with tempfile.TemporaryFile(mode="w+") as log:
        try:
            with server_process(args.model_path, ["--model-name", MODEL], log=log) as (url, health, _process):
                print(f"server: {url}/ (web chat page), model {health['model']}")
                print(f"question: {args.question}")
                answer, finish, tokens = ask(url, health["chat_template"], args.question, args.max_tokens,
                                             args.temperature)
            print(f"answer: {answer.strip()}")
            print(f"({tokens} tokens, finish_reason={finish}; server stopped)")
            return 0
        except (LumiError, openai.OpenAIError) as exc:
            log.seek(0)
            print(f"error: {exc}\n--- server log ---\n{log.read()}", file=sys.stderr)
            return 1


if __name__ == "__main__":
    sys.exit(main())
