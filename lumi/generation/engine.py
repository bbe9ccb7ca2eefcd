"""The generation engine: one loop, continuous batching over a slot KV cache, one queue of outputs per request.

Every iteration (``step``) the loop (1) admits waiting requests into free slots, (2) prefills admitted prompts in
chunks of at most ``prefill_chunk`` tokens in all, so a long prompt never holds up the others for more than one chunk
(a prompt that several requests share, ``n`` choices or a GRPO group, is prefilled once and its keys/values copied),
(3) runs ONE batched decode step for every request that is generating and (4) evicts finished and cancelled
requests, freeing their slots. Each new token goes through the request's sampler, its incremental detokenizer and its
stop-string matcher, and the resulting ``Output`` is pushed to the request's sink (a queue by default; the API gives
a sink that feeds an asyncio queue). Chat, the API and the benchmarks drive the loop in its own thread (``start``);
the evaluator's generation checks submit a whole run and drive it in their own thread (``run_all``).

Faults stay with their request: a request whose sampler fails (at admission or on a token) fails alone and frees
its slot; only a failed forward pass (which the batch shares) fails every request in it. ``health()`` says whether
the engine can serve: its loop is alive and its last step did not fail.

transformers' own continuous batching (``generate_batch`` / paged attention) was measured slower than plain
``generate`` on a tiny CPU model; it remains the better option on a GPU at scale (docs/SERVING.md).
"""

from __future__ import annotations

import logging
import queue
import threading
import uuid
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Callable, Iterator

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from lumi.core.errors import LumiError
from lumi.core.special_tokens import IM_END_TOKEN
from lumi.generation.detokenize import IncrementalDetokenizer, StopStringMatcher
from lumi.generation.kv_cache import SlotKVCache, forward_with_cache
from lumi.generation.sampling import SamplingParams, TokenSampler, choose_rows

log = logging.getLogger(__name__)

FINISH_STOP, FINISH_LENGTH, FINISH_CANCELLED, FINISH_ERROR = "stop", "length", "cancelled", "error"


class QueueFull(Exception):
    """The bounded waiting queue is full (the API answers 503)."""


class EngineUnavailable(Exception):
    """The engine cannot take requests: its process has stopped (the API answers 503)."""


class PromptTooLong(LumiError):
    """The prompt (plus the tokens asked for) does not fit the model's context (the API answers 400)."""


@dataclass
class TokenLogprob:
    """A token's log-probability under the model (log-softmax of its raw logits, before any sampling setting, as
    vLLM reports them and as ``lumi evaluate`` scores), and the ``top`` most likely ``(token id, log-prob)``."""

    token_id: int
    logprob: float
    top: list[tuple[int, float]]


@dataclass
class Output:
    """What one engine step produced for one request: new text and token ids; the last one has ``finish_reason``.
    ``logprobs`` (one per token id) when the request asked for them; ``prompt_logprobs`` (None for the first prompt
    token, which nothing predicts) on a request's first output when it asked for those."""

    text: str
    token_ids: list[int]
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    error: str | None = None
    logprobs: list[TokenLogprob] | None = None
    prompt_logprobs: list[TokenLogprob | None] | None = None


def token_logprobs(logits: torch.Tensor, chosen: torch.Tensor | list[int], top: int) -> list[TokenLogprob]:
    """``logits`` ``[n, vocab]``: the log-prob of ``chosen[i]`` under row ``i``, and each row's ``top`` likeliest."""
    logprobs = torch.log_softmax(logits.float(), dim=-1)
    chosen = torch.as_tensor(chosen, device=logits.device)
    picked = logprobs.gather(-1, chosen[:, None])[:, 0].tolist()
    values, ids = logprobs.topk(top, dim=-1) if top else (logprobs[:, :0], chosen[:, None][:, :0])
    return [TokenLogprob(int(c), lp, list(zip(i, v))) for c, lp, i, v in
            zip(chosen.tolist(), picked, ids.tolist(), values.tolist())]


@dataclass
class Completion:
    text: str
    token_ids: list[int]
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int


class Request:
    """A submitted request: iterate it for its outputs (the default sink), ``cancel()`` it when its client is gone."""

    def __init__(self, prompt_ids: list[int], params: SamplingParams, sink: Callable[[Output], None] | None,
                 stop_ids: set[int], sampler: TokenSampler, logprobs: int | None = None,
                 prompt_logprobs: int | None = None):
        self.id = uuid.uuid4().hex
        self.prompt_ids = list(prompt_ids)
        self.params = params
        self.sampler = sampler
        self.logprobs, self.prompt_logprobs = logprobs, prompt_logprobs  # None: not asked; n: with the top n
        self.stop_ids = stop_ids
        self._queue: queue.Queue[Output] = queue.Queue()
        self.sink = sink or self._queue.put
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True

    def __iter__(self) -> Iterator[Output]:
        while True:
            output = self._queue.get()
            yield output
            if output.finish_reason is not None:
                return


@dataclass
class _Running:
    """Engine-side state of an admitted request."""

    request: Request
    slot: int
    sampler: TokenSampler
    detokenizer: IncrementalDetokenizer
    stop_matcher: StopStringMatcher
    max_new_tokens: int
    tokens: list[int] = field(default_factory=list)  # prompt + output
    computed: int = 0  # tokens whose keys/values are in the cache
    finished: bool = False
    prompt_logprobs: list[TokenLogprob | None] | None = None  # filled during prefill when asked for

    @property
    def num_prompt(self) -> int:
        return len(self.request.prompt_ids)

    @property
    def num_output(self) -> int:
        return len(self.tokens) - self.num_prompt


def stop_token_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> set[int]:
    """EOS and end-of-turn ids: the generation config's ``eos_token_id`` (one or a list), the tokenizer's EOS and,
    for a chat model, ``<|im_end|>``."""
    configured = getattr(model.generation_config, "eos_token_id", None)
    ids = set(configured if isinstance(configured, list) else [configured])
    ids.add(tokenizer.eos_token_id)
    if tokenizer.chat_template and IM_END_TOKEN in tokenizer.get_vocab():
        ids.add(tokenizer.convert_tokens_to_ids(IM_END_TOKEN))
    return {i for i in ids if i is not None}


def checked_sampler(prompt_ids: list[int], params: SamplingParams, vocab_size: int, context: int,
                    device: torch.device | str) -> TokenSampler:
    """A request's sampler, or the one-line reason it cannot run (``PromptTooLong``, ``LumiError``): checked where it
    is submitted, so nothing it carries can fail the engine loop later (``Engine.submit`` and the engine process's
    front end both call this)."""
    if not prompt_ids:
        raise PromptTooLong("the prompt is empty: give at least one token")
    if any(not 0 <= i < vocab_size for i in prompt_ids):
        raise LumiError(f"prompt token ids must be in 0..{vocab_size - 1}")
    if any(not 0 <= i < vocab_size for i in params.logit_bias):
        raise LumiError(f"logit_bias token ids must be in 0..{vocab_size - 1}")
    if len(prompt_ids) >= context:
        raise PromptTooLong(f"the prompt has {len(prompt_ids)} tokens; this model's context is {context} "
                            "tokens (prompt + output): shorten the prompt")
    if params.max_tokens is not None and len(prompt_ids) + params.max_tokens > context:
        raise PromptTooLong(f"prompt ({len(prompt_ids)} tokens) + max_tokens ({params.max_tokens}) exceeds the "
                            f"model's context of {context} tokens: lower max_tokens or shorten the prompt")
    try:  # built here, so parameters the sampler cannot take fail this call, never the engine loop
        return TokenSampler(params, device)
    except (RuntimeError, ValueError, OverflowError) as exc:
        raise LumiError(f"sampling parameters not usable: {exc}") from None


class Engine:
    def __init__(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, max_batch: int = 8,
                 prefill_chunk: int = 256, max_waiting: int = 64, context: int | None = None):
        if max_batch < 1 or prefill_chunk < 1 or max_waiting < 0:
            raise LumiError("engine: max_batch and prefill_chunk must be >= 1 and max_waiting >= 0")
        self.model, self.tokenizer = model.eval(), tokenizer
        self.device = next(model.parameters()).device
        model_context = int(model.config.max_position_embeddings)
        if context is not None and not 1 < context <= model_context:
            raise LumiError(f"engine: context must be in 2..{model_context} (the model's), got {context}")
        self.context = context or model_context
        self.max_batch, self.prefill_chunk, self.max_waiting = max_batch, prefill_chunk, max_waiting
        self.stop_ids = stop_token_ids(model, tokenizer)
        self.cache = SlotKVCache(model, max_batch, self.context)
        self.free_slots = list(range(max_batch))
        self.waiting: deque[Request] = deque()
        self.running: list[_Running] = []
        self.stats: Counter[str] = Counter()
        self._wake = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closing = False
        self.last_error: str | None = None  # of the last step, None once a step succeeds again

    # --- client side -------------------------------------------------------------------------------------------

    def submit(self, prompt_ids: list[int], params: SamplingParams, sink: Callable[[Output], None] | None = None,
               stop_ids: set[int] | None = None, logprobs: int | None = None,
               prompt_logprobs: int | None = None) -> Request:
        """Queue a request; ``stop_ids`` replaces the engine's stop token ids for it (the evaluator's own set);
        ``logprobs`` / ``prompt_logprobs``: report log-probs of output / prompt tokens with the top n of each."""
        sampler = checked_sampler(prompt_ids, params, self.model.config.vocab_size, self.context, self.device)
        request = Request(prompt_ids, params, sink, self.stop_ids if stop_ids is None else set(stop_ids), sampler,
                          logprobs, prompt_logprobs)
        with self._wake:
            if len(self.waiting) >= self.max_waiting + max(0, len(self.free_slots)):
                raise QueueFull(f"{len(self.waiting)} requests are waiting; try again later")
            self.waiting.append(request)
            self._wake.notify()
        return request

    def generate(self, prompt_ids: list[int], params: SamplingParams) -> Completion:
        """Submit and wait (the engine loop must be running)."""
        return _completion(self.submit(prompt_ids, params))

    def run_all(self, prompts: list[tuple[list[int], SamplingParams]],
                stop_ids: set[int] | None = None) -> list[Completion]:
        """Submit every ``(prompt ids, params)`` and run the loop in this thread until all have finished (batch use,
        on an engine whose loop thread is not started): continuous batching over the whole list, completions in
        its order. A failed step raises here instead of failing the requests."""
        if self._thread is not None:
            raise LumiError("engine: run_all drives the loop itself; do not start() this engine")
        self.max_waiting = max(self.max_waiting, len(prompts))
        requests = [self.submit(ids, params, stop_ids=stop_ids) for ids, params in prompts]
        with torch.inference_mode():
            while self.waiting or self.running:
                self.step()
        return [_completion(request) for request in requests]

    def load(self) -> dict[str, int]:
        return {"running": len(self.running), "waiting": len(self.waiting), "slots": self.max_batch,
                "free_slots": len(self.free_slots)}

    def health(self) -> str | None:
        """None when the engine can serve, else why not (its loop died, or its last step failed)."""
        if self._thread is not None and not self._thread.is_alive():
            return "the engine loop has stopped" + (f" ({self.last_error})" if self.last_error else "")
        return None if self.last_error is None else f"the last engine step failed: {self.last_error}"

    # --- engine loop -------------------------------------------------------------------------------------------

    def start(self) -> "Engine":
        self._thread = threading.Thread(target=self._loop, name="lumi-engine", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        with self._wake:
            self._closing = True
            self._wake.notify()
        if self._thread is not None:
            self._thread.join()
        for request in [r.request for r in self.running] + list(self.waiting):
            request.sink(Output("", [], FINISH_CANCELLED))

    def __enter__(self) -> "Engine":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    def _loop(self) -> None:
        with torch.inference_mode():
            while True:
                with self._wake:
                    while not self._closing and not self.waiting and not self.running:
                        self._wake.wait()
                    if self._closing:
                        return
                self.serving_step()

    def serving_step(self) -> None:
        """One step of a serving loop: a failed forward fails its requests and shows in ``health()``, never stops
        the loop."""
        try:
            self.step()
            self.last_error = None
        except Exception as exc:
            log.exception("engine step failed")
            self.last_error = f"{type(exc).__name__}: {exc}"
            self._fail_all(self.last_error)

    def step(self) -> None:
        self._admit()
        self._prefill()
        self._decode()
        self._evict()

    def _admit(self) -> None:
        with self._wake:
            while self.waiting and self.free_slots:
                request = self.waiting.popleft()
                if request.cancelled:
                    self.stats["cancelled"] += 1
                    request.sink(Output("", [], FINISH_CANCELLED, len(request.prompt_ids)))
                    continue
                self.free_slots.sort()
                slot = self.free_slots.pop(0)  # lowest first: running slots stay consecutive (read without a copy)
                room = self.context - len(request.prompt_ids)
                try:
                    state = _Running(request, slot, request.sampler,
                                     IncrementalDetokenizer(self.tokenizer, request.prompt_ids),
                                     StopStringMatcher(request.params.stop),
                                     min(request.params.max_tokens or room, room), tokens=list(request.prompt_ids),
                                     prompt_logprobs=None if request.prompt_logprobs is None else [None])
                except Exception as exc:  # this request's fault: it fails alone and its slot is free again
                    self.free_slots.append(slot)
                    self._fail_one(request, exc, 0)
                    continue
                self.running.append(state)

    def _prefill(self) -> None:
        budget = self.prefill_chunk
        for state in self.running:
            if budget == 0:
                break
            if state.computed >= state.num_prompt or state.request.cancelled:
                continue
            if state.computed == 0 and self._shares_a_prefill(state) and any(
                    0 < other.computed < other.num_prompt and not other.request.cancelled
                    and other.request.prompt_ids == state.request.prompt_ids for other in self.running):
                continue  # the same prompt is being prefilled: this one gets its keys/values when that one is done
            count = min(budget, state.num_prompt - state.computed)
            chunk = torch.tensor([state.tokens[state.computed:state.computed + count]], device=self.device)
            positions = torch.arange(state.computed, state.computed + count, device=self.device)[None]
            wants_prompt = state.prompt_logprobs is not None
            logits = forward_with_cache(self.model, self.cache, chunk, [state.slot], positions,
                                        logits_to_keep=0 if wants_prompt else 1)
            if wants_prompt:  # position p's logits score prompt token p + 1
                scored = state.tokens[state.computed + 1:state.computed + count + 1]
                state.prompt_logprobs += token_logprobs(logits[0, :len(scored)], scored,
                                                        state.request.prompt_logprobs)
            state.computed += count
            budget -= count
            if state.computed == state.num_prompt:
                self._share_prefill(state, logits[0, -1])
                self._accept(state, logits[0, -1])

    @staticmethod
    def _shares_a_prefill(state: _Running) -> bool:
        """Whether this request may take another's prefill of its prompt (not when it asked for prompt log-probs)."""
        return state.prompt_logprobs is None

    def _share_prefill(self, done: _Running, logits: torch.Tensor) -> None:
        """Requests with the same prompt as ``done`` that have not started (``n`` choices, a GRPO group) take its
        keys/values and last logits instead of prefilling the prompt again; each then samples with its own sampler."""
        takers = [s for s in self.running if s is not done and s.computed == 0 and not s.request.cancelled
                  and self._shares_a_prefill(s) and s.request.prompt_ids == done.request.prompt_ids]
        if not takers:
            return
        self.cache.copy_prefix(done.slot, [s.slot for s in takers], done.num_prompt)
        self.stats["shared_prefills"] += len(takers)
        for state in takers:
            state.computed = state.num_prompt
            self._accept(state, logits)

    def _decode(self) -> None:
        batch = sorted((s for s in self.running if not s.finished and not s.request.cancelled
                        and s.computed == len(s.tokens) - 1), key=lambda s: s.slot)
        if not batch:
            return
        input_ids = torch.tensor([[s.tokens[-1]] for s in batch], device=self.device)
        positions = torch.tensor([[s.computed] for s in batch], device=self.device)
        logits = forward_with_cache(self.model, self.cache, input_ids, [s.slot for s in batch], positions)
        tokens = choose_rows(logits[:, -1], [s.sampler for s in batch])
        for row, state in enumerate(batch):
            state.computed += 1
            self._accept(state, logits[row, -1], tokens[row])

    def _accept(self, state: _Running, logits: torch.Tensor, token: int | None = None) -> None:
        """Choose the next token (unless the step's ``choose_rows`` did), turn it into text and push the output;
        decide whether the request is done."""
        try:
            if token is None:
                token = state.sampler.choose(logits, state.tokens, state.num_prompt)
        except Exception as exc:  # this request's sampler failed: it alone fails, the batch goes on
            state.finished = True
            self._fail_one(state.request, exc, state.num_output)
            return
        logprobs = None if state.request.logprobs is None else \
            token_logprobs(logits[None], [token], state.request.logprobs)
        prompt_logprobs, state.prompt_logprobs = state.prompt_logprobs, None  # sent once, with the first output
        state.tokens.append(token)
        if token in state.request.stop_ids:
            text, finish = self._final_text(state), FINISH_STOP
        else:
            text, stopped = state.stop_matcher.feed(state.detokenizer.add(token))
            finish = FINISH_STOP if stopped else None
            if finish is None and state.num_output >= state.max_new_tokens:
                text, finish = text + self._final_text(state), FINISH_LENGTH
        if finish is not None:
            state.finished = True
            self.stats[f"finished_{finish}"] += 1
        state.request.sink(Output(text, [token], finish, state.num_prompt, state.num_output, logprobs=logprobs,
                                  prompt_logprobs=prompt_logprobs))

    @staticmethod
    def _final_text(state: _Running) -> str:
        """The text still held back by the detokenizer and the stop matcher, cut at a stop string if one is there."""
        text, stopped = state.stop_matcher.feed(state.detokenizer.flush())
        return text if stopped else text + state.stop_matcher.flush()

    def _evict(self) -> None:
        kept = []
        for state in self.running:
            if state.request.cancelled and not state.finished:
                self.stats["cancelled"] += 1
                state.request.sink(Output("", [], FINISH_CANCELLED, state.num_prompt, state.num_output))
            elif not state.finished:
                kept.append(state)
                continue
            self.free_slots.append(state.slot)
        with self._wake:
            self.running = kept

    def _fail_one(self, request: Request, exc: Exception, completion_tokens: int) -> None:
        log.warning("request %s failed: %s: %s", request.id, type(exc).__name__, exc)
        self.stats["errors"] += 1
        request.sink(Output("", [], FINISH_ERROR, len(request.prompt_ids), completion_tokens,
                            error=f"{type(exc).__name__}: {exc}"))

    def _fail_all(self, error: str) -> None:
        with self._wake:
            failed = [s.request for s in self.running] + list(self.waiting)
            self.free_slots.extend(s.slot for s in self.running)
            self.running, self.waiting = [], deque()
        for request in failed:
            self.stats["errors"] += 1
            request.sink(Output("", [], FINISH_ERROR, len(request.prompt_ids), error=error))


def _completion(outputs: Iterator[Output] | Request) -> Completion:
    """A request's outputs joined into one completion (raises when generation failed)."""
    text, ids = [], []
    for output in outputs:
        text.append(output.text)
        ids.extend(output.token_ids)
        if output.finish_reason is not None:
            if output.error:
                raise LumiError(f"generation failed: {output.error}")
            return Completion("".join(text), ids, output.finish_reason, output.prompt_tokens,
                              output.completion_tokens)
    raise AssertionError("unreachable: a request always ends with a finish_reason")
