"""OpenAI's response shapes for the engine's outputs: whole responses and server-sent event streams, with ``n``
choices per prompt, several prompts per completion request, ``logprobs`` / ``top_logprobs`` and ``echo``.

A response is a set of ``Choice``s, each one engine request; their outputs arrive on one ``OutputFeed`` tagged with
the choice's index. Token strings in log-prob lists are the tokenizer's pieces with SentencePiece's word marker ``▁``
shown as a space (what OpenAI's and vLLM's lists show for a SentencePiece model); the log-probs are the model's own
(log-softmax of its logits, before temperature and the other sampling settings, as vLLM reports them).
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import AsyncIterator

from fastapi import Request
from transformers import PreTrainedTokenizerBase

from lumi.generation.engine import FINISH_ERROR, Output, TokenLogprob
from lumi.serve.errors import error_body
from lumi.serve.feed import OutputFeed, merge

WORD_MARKER = "\u2581"


@dataclass
class Choice:
    """One choice being generated and what it has produced so far."""

    index: int
    request: object  # lumi.generation.engine.Request
    echo: str | None = None  # the prompt's text, put before the answer (completions' echo)
    text: list[str] = field(default_factory=list)
    token_ids: list[int] = field(default_factory=list)  # generated
    logprobs: list[TokenLogprob | None] = field(default_factory=list)  # the echoed prompt's, then the generated
    final: Output | None = None

    def add(self, output: Output) -> None:
        self.text.append(output.text)
        self.token_ids += output.token_ids
        self.logprobs += (output.prompt_logprobs or []) + (output.logprobs or [])
        if output.finish_reason is not None:
            self.final = output


class Pieces:
    """Token id -> its text in log-prob lists (cached: the same ids recur)."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase):
        self.tokenizer, self.cache = tokenizer, {}

    def __call__(self, token_id: int) -> str:
        if token_id not in self.cache:
            self.cache[token_id] = str(self.tokenizer.convert_ids_to_tokens(token_id)).replace(WORD_MARKER, " ")
        return self.cache[token_id]


def completion_logprobs(entries: list[TokenLogprob | None], token_ids: list[int], pieces: Pieces,
                        offset: int = 0) -> dict:
    """The legacy completions format: parallel lists; a prompt's first token has no log-prob (null)."""
    tokens = [pieces(i) for i in token_ids]
    offsets, position = [], offset
    for token in tokens:
        offsets.append(position)
        position += len(token)
    return {"tokens": tokens, "token_logprobs": [e.logprob if e else None for e in entries],
            "top_logprobs": [({pieces(i): lp for i, lp in e.top} if e else None) for e in entries],
            "text_offset": offsets}


def chat_logprobs(entries: list[TokenLogprob], pieces: Pieces) -> dict:
    def item(token_id: int, logprob: float) -> dict:
        token = pieces(token_id)
        return {"token": token, "logprob": logprob, "bytes": list(token.encode("utf-8"))}

    return {"content": [{**item(e.token_id, e.logprob), "top_logprobs": [item(i, lp) for i, lp in e.top]}
                        for e in entries]}


def usage(choices: list[Choice], prompt_counts: list[int]) -> dict[str, int]:
    """Prompt tokens count once per prompt (not per choice); completion tokens of every choice."""
    completion = sum(c.final.completion_tokens for c in choices if c.final)
    prompt = sum(prompt_counts)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def choice_body(choice: Choice, chat: bool, wants_logprobs: bool, pieces: Pieces) -> dict:
    text = "".join(choice.text)
    final = choice.final
    if chat:
        logprobs = chat_logprobs([e for e in choice.logprobs if e], pieces) if wants_logprobs else None
        return {"index": choice.index, "message": {"role": "assistant", "content": text}, "logprobs": logprobs,
                "finish_reason": final.finish_reason}
    ids = ([] if choice.echo is None else list(choice.request.prompt_ids)) + choice.token_ids
    logprobs = completion_logprobs(choice.logprobs, ids, pieces) if wants_logprobs else None
    return {"index": choice.index, "text": (choice.echo or "") + text, "logprobs": logprobs,
            "finish_reason": final.finish_reason}


async def collect(http: Request, choices: list[Choice], feed: OutputFeed) -> bool:
    """Wait until every choice has finished; False (and all cancelled) if the client disconnects meanwhile."""
    async def disconnected() -> None:
        while (await http.receive())["type"] != "http.disconnect":
            pass

    watcher = asyncio.ensure_future(disconnected())
    by_index = {c.index: c for c in choices}
    try:
        while any(c.final is None for c in choices):
            getter = asyncio.ensure_future(feed.take())
            done, _ = await asyncio.wait({getter, watcher}, return_when=asyncio.FIRST_COMPLETED)
            if watcher in done:
                getter.cancel()
                cancel(choices)
                return False
            for index, output in getter.result():
                by_index[index].add(output)
        return True
    finally:
        watcher.cancel()


def cancel(choices: list[Choice]) -> None:
    for choice in choices:
        choice.request.cancel()  # a no-op once finished


async def stream_events(choices: list[Choice], feed: OutputFeed, common: dict, chat: bool,
                        wants_logprobs: bool, include_usage: bool, prompt_counts: list[int],
                        pieces: Pieces) -> AsyncIterator[str]:
    """Server-sent events: per choice, one chunk for what it produced since the loop last looked (one token while the
    loop keeps up, several when it lags: ``lumi.serve.feed``), written in one piece; when the client goes away,
    Starlette cancels this generator and ``finally`` cancels the requests in the engine."""
    kind = "chat.completion.chunk" if chat else "text_completion"
    by_index = {c.index: c for c in choices}
    text_offsets = {c.index: 0 for c in choices}  # completions' logprobs.text_offset: from the start of the choice

    def event(body: list[dict], **extra) -> str:
        payload = {**common, "object": kind, "choices": body, **({"usage": None} if include_usage else {}), **extra}
        return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"

    def chunk(choice: Choice, text: str | None, output: Output | None, finish_reason: str | None) -> dict:
        entries = [e for e in (output.logprobs or [])] if output else []
        if chat:
            logprobs = chat_logprobs(entries, pieces) if wants_logprobs and entries else None
            return {"index": choice.index, "delta": {} if text is None else {"content": text},
                    "logprobs": logprobs, "finish_reason": finish_reason}
        if wants_logprobs and output is not None:
            entries = (output.prompt_logprobs or []) + entries
            ids = (list(choice.request.prompt_ids) if output.prompt_logprobs is not None else []) + output.token_ids
            logprobs = completion_logprobs(entries, ids, pieces, text_offsets[choice.index])
            text_offsets[choice.index] += sum(len(token) for token in logprobs["tokens"])
        else:
            logprobs = None
        return {"index": choice.index, "text": text or "", "logprobs": logprobs, "finish_reason": finish_reason}

    def events_for(choice: Choice, output: Output, first: bool) -> list[str]:
        text = output.text if choice.echo is None or not first else choice.echo + output.text
        events = [event([chunk(choice, text, output, None)])] if text or (wants_logprobs and output.token_ids) else []
        if output.finish_reason is not None:
            events.append(event([chunk(choice, None if chat else "", None, output.finish_reason)]))
        return events

    try:
        if chat:
            yield "".join(event([{"index": choice.index, "delta": {"role": "assistant", "content": ""},
                                  "logprobs": None, "finish_reason": None}]) for choice in choices)
        started: set[int] = set()
        failed = None
        while failed is None and any(c.final is None for c in choices):
            arrived: dict[int, list[Output]] = {}
            for index, output in await feed.take():
                arrived.setdefault(index, []).append(output)
            events = []
            for index, outputs in arrived.items():
                output, choice = merge(outputs), by_index[index]
                choice.add(output)
                if output.finish_reason == FINISH_ERROR:  # mid-stream: the status is sent already: an error event
                    failed = output
                    break
                events += events_for(choice, output, index not in started)
                started.add(index)
            if failed is not None:
                error = error_body(f"generation failed: {failed.error}", "server_error")
                events.append(f"data: {json.dumps(error)}\n\n")
            elif include_usage and all(c.final is not None for c in choices):
                events.append(event([], usage=usage(choices, prompt_counts)))
            if events:
                yield "".join(events)
        yield "data: [DONE]\n\n"
    finally:
        cancel(choices)
