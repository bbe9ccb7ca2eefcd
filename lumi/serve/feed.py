"""The hand-off of engine outputs (made in the engine's thread, or the engine process's reader thread) to one response
on the event loop.

Every wake-up of the event loop costs CPU; with the engine in the same process it also cost the engine time (the
loop's Python runs under the same GIL: measured on a micro model making ~1,000 tokens/s, a wake-up per token cost a
streamed client ~15% of its speed, docs/BENCHMARKS.md; ``lumi serve`` now runs the engine in a process of its own).
So the loop is woken only when no wake-up is pending, and (for a stream) at most once per ``interval_s``; the loop then
takes everything that arrived meanwhile, and a stream sends a choice's tokens in one chunk (``merge``). The first
output, a finished one, and every output of a model slower than one token per interval wake the loop at once; a
held output waits at most until the engine's next output for that response. A plain (non-streamed) response
wakes the loop only when a choice has finished: nothing reads the tokens before that. (asyncio has no queue that
is filled from another thread and drained in batches; hence this small class.)
"""

from __future__ import annotations

import asyncio
import threading
import time

from lumi.generation.engine import Output


class OutputFeed:
    def __init__(self, loop: asyncio.AbstractEventLoop, streaming: bool, interval_s: float = 0.0):
        self.loop, self.streaming, self.interval_s = loop, streaming, interval_s
        self._last_wake = float("-inf")
        self._lock = threading.Lock()
        self._outputs: list[tuple[int, Output]] = []  # (choice index, output), in the order they were made
        self._wake_pending = False
        self._arrived = asyncio.Event()

    def put(self, index: int, output: Output) -> None:
        """From the engine thread: one output of choice ``index``."""
        with self._lock:
            self._outputs.append((index, output))
            if self._wake_pending:
                return
            if output.finish_reason is None:
                if not self.streaming or time.monotonic() - self._last_wake < self.interval_s:
                    return
            self._wake_pending, self._last_wake = True, time.monotonic()
        try:
            self.loop.call_soon_threadsafe(self._arrived.set)
        except RuntimeError:  # the event loop is gone (server shutting down): nobody is listening
            pass

    async def take(self) -> list[tuple[int, Output]]:
        """On the loop: wait for a wake-up, then everything that has arrived, in order."""
        await self._arrived.wait()
        self._arrived.clear()
        with self._lock:
            outputs, self._outputs, self._wake_pending = self._outputs, [], False
        return outputs


def merge(outputs: list[Output]) -> Output:
    """Consecutive outputs of one request as one: texts, token ids and log-probs joined in order; the finish (only
    ever on a request's last output) and counts of the last. Each text is already past the stop-string matcher, so
    the joined text holds no stop string either."""
    if len(outputs) == 1:
        return outputs[0]
    last = outputs[-1]
    logprobs = [e for o in outputs for e in (o.logprobs or [])] if any(o.logprobs is not None for o in outputs) \
        else None
    return Output("".join(o.text for o in outputs), [i for o in outputs for i in o.token_ids], last.finish_reason,
                  last.prompt_tokens, last.completion_tokens, last.error, logprobs, outputs[0].prompt_logprobs)
