"""The terminal chat session behind ``lumi chat``: tokens are printed as they are generated.

A chat model (its tokenizer has a chat template) keeps a multi-turn history rendered through that template; when the
history outgrows the context the oldest turns are dropped (and the user is told). A base model without a chat
template is chosen automatically to run in raw completion mode: each line is continued as plain text.

The answer's room: ``max_tokens`` when set, else everything the prompt leaves of the context; either way the prompt
(history) is cut to leave at least ``answer_room`` tokens for the answer, so the defaults fit any context.
"""

from __future__ import annotations

import json
from typing import Callable, TextIO

from pydantic import ValidationError

from lumi.core.errors import LumiError
from lumi.generation.engine import Engine
from lumi.serve.prompts import completion_ids, fit_history, has_chat_template
from lumi.generation.sampling import SamplingParams

PROMPT = ">>> "
DEFAULT_PARAMS = SamplingParams(temperature=0.7, top_p=0.95, repetition_penalty=1.1)  # max_tokens: the room left
HELP = "commands: /reset  /system TEXT  /params k=v ...  /help  /quit"
COMMANDS = """commands:
  /reset            forget the conversation
  /system TEXT      set the system prompt (/system alone clears it)
  /params k=v ...   sampling settings, e.g. /params temperature=0.2 max_tokens=100 (/params alone shows them)
  /help             this list
  /quit             leave (or Ctrl-D); Ctrl-C stops the answer being generated
"""


def answer_room(context: int, max_tokens: int | None) -> int:
    """Tokens kept free for the answer: ``max_tokens`` when set, else a quarter of the context."""
    return max_tokens if max_tokens is not None else max(1, context // 4)


class ChatSession:
    def __init__(self, engine: Engine, write: Callable[[str], None], system: str | None = None,
                 raw: bool | None = None, params: SamplingParams = DEFAULT_PARAMS):
        self.engine, self.write = engine, write
        self.raw = not has_chat_template(engine.tokenizer) if raw is None else raw
        self.system = system
        self.params = params.model_copy()
        self.history: list[dict[str, str]] = []

    def banner(self) -> str:
        mode = ("raw completion mode (the tokenizer has no chat template): each line is continued as plain text"
                if self.raw else "chat mode (the checkpoint's chat template)")
        return f"{mode}; context {self.engine.context} tokens. {HELP}\n"

    def handle(self, line: str) -> bool:
        """One line of input; False when the session should end."""
        text = line.strip()
        if not text:
            return True
        if text.startswith("/"):
            return self._command(text)
        self._answer(line.rstrip("\n"))
        return True

    def _command(self, text: str) -> bool:
        name, _, rest = text.partition(" ")
        if name in ("/quit", "/exit"):
            return False
        if name == "/reset":
            self.history.clear()
            self.write("(conversation reset)\n")
        elif name == "/system":
            self.system = rest.strip() or None
            self.write(f"(system prompt {'set' if self.system else 'cleared'})\n")
        elif name == "/params":
            self._set_params(rest.split())
        elif name == "/help":
            self.write(COMMANDS)
        else:
            self.write(f"unknown command {name}; {HELP}\n")
        return True

    def _set_params(self, assignments: list[str]) -> None:
        updated = self.params.model_copy()
        for assignment in assignments:
            key, sep, value = assignment.partition("=")
            if not sep or key not in SamplingParams.model_fields:
                self.write(f"expected k=v with k one of {', '.join(SamplingParams.model_fields)}; got {assignment!r}\n")
                return
            try:
                parsed = json.loads(value) if value not in ("", "none", "None") else None
            except json.JSONDecodeError:
                parsed = value  # a bare string (a stop string)
            if key == "stop" and isinstance(parsed, str):
                parsed = [parsed]
            try:
                setattr(updated, key, parsed)
            except ValidationError as exc:
                self.write(f"{key}: {exc.errors()[0]['msg']}\n")
                return
        self.params = updated
        self.write(" ".join(f"{k}={v}" for k, v in self.params.model_dump().items()) + "\n")

    def _prompt_ids(self, text: str) -> list[int]:
        budget = self.engine.context - answer_room(self.engine.context, self.params.max_tokens)
        if budget < 1:
            raise LumiError(f"max_tokens={self.params.max_tokens} leaves no room in the context of "
                            f"{self.engine.context} tokens: /params max_tokens=N with a smaller N")
        if self.raw:
            ids = completion_ids(self.engine.tokenizer, text)
            if len(ids) > budget:
                self.write(f"(prompt cut from the front: {len(ids) - budget} of {len(ids)} tokens dropped to fit "
                           "the context)\n")
                ids = ids[len(ids) - budget:]
            return ids
        messages = ([{"role": "system", "content": self.system}] if self.system else []) + self.history
        kept, ids, dropped = fit_history(self.engine.tokenizer, messages + [{"role": "user", "content": text}],
                                         budget)
        if dropped:
            self.write(f"(history cut: the {dropped} oldest messages were dropped to fit the context of "
                       f"{self.engine.context} tokens)\n")
            self.history = [m for m in kept if m["role"] != "system"][:-1]
        return ids

    def _answer(self, text: str) -> None:
        try:
            prompt_ids = self._prompt_ids(text)
            request = self.engine.submit(prompt_ids, self.params)
        except LumiError as exc:
            self.write(f"error: {exc}\n")
            return
        answer, failed = [], False
        try:
            for output in request:
                answer.append(output.text)
                self.write(output.text)
                if output.finish_reason == "error":
                    failed = True
                    self.write(f"\nerror: {output.error}")
        except KeyboardInterrupt:
            request.cancel()
            self.write(" [stopped]")
        self.write("\n")
        if not self.raw and not failed:  # a failed turn is not part of the conversation
            self.history += [{"role": "user", "content": text}, {"role": "assistant", "content": "".join(answer)}]


def writer(stream: TextIO) -> Callable[[str], None]:
    """``write`` for a session: text to ``stream``, flushed at once (tokens appear as they come)."""
    def write(text: str) -> None:
        stream.write(text)
        stream.flush()
    return write


def chat_loop(session: ChatSession) -> int:
    session.write(session.banner())
    while True:
        try:
            line = input(PROMPT)
        except EOFError:
            session.write("\n")
            return 0
        except KeyboardInterrupt:
            session.write("\n(type /quit to leave)\n")
            continue
        if not session.handle(line):
            return 0
