"""``lumi serve``'s engine in a process of its own, behind the same ``submit`` / ``health`` / ``load`` as ``Engine``.

Why a process: in one process the event loop's Python (HTTP, SSE, JSON, tokenization) and the engine's Python
(scheduling, sampling, detokenizing) take turns under one GIL, and every wake-up of the loop stalls the engine. On a
micro model making ~1,000 tokens/s that held one streamed client at 0.89-0.93x ``model.generate`` while the engine
alone ran at 1.19x (docs/BENCHMARKS.md). vLLM's OpenAI front end keeps its engine in another process for the same
reason. Here the child runs ``Engine.step`` in its only thread and talks over one ``multiprocessing`` pipe: the
parent sends ``submit`` and ``cancel``; the child answers once per engine step with every output that step made and
its load, stats and last error. So the engine never shares a GIL with the server, and the pipe costs one message a
step, not one a token.

Requests are checked in the parent before they are sent (``checked_sampler``, the engine's own check, and the queue
bound), so a refusal is the same immediate 400/503 as in-process. If the child dies, every request it held ends with
an error, ``health()`` says so (the API's /health answers 503) and new requests are refused with
``EngineUnavailable``.
"""

from __future__ import annotations

import argparse
import itertools
import logging
import multiprocessing
import os
import threading
from collections import Counter
from typing import Callable

from lumi.core.errors import LumiError
from lumi.generation.engine import FINISH_ERROR, EngineUnavailable, Output, QueueFull, checked_sampler
from lumi.generation.sampling import SamplingParams

log = logging.getLogger(__name__)


class RemoteRequest:
    """The parent's handle on one request in the child: what the API reads of an engine ``Request``."""

    def __init__(self, owner: "EngineProcess", request_id: int, prompt_ids: list[int]):
        self.id = f"{os.getpid():x}{request_id:012x}"
        self.number, self.prompt_ids, self._owner = request_id, list(prompt_ids), owner
        self.cancelled = False

    def cancel(self) -> None:
        """Cancel it in the child (nothing to send once it has finished: the API cancels every request it ends)."""
        if not self.cancelled and self.number in self._owner._sinks:
            self.cancelled = True
            try:
                self._owner._send(("cancel", self.number))
            except EngineUnavailable:  # the child is gone, and with it the request
                pass


class EngineProcess:
    """Start with ``with EngineProcess(args) as engine:`` (``args``: ``lumi serve``'s model flags); the model loads in
    the child, which sends back the tokenizer it loaded, so both sides encode with the one verified tokenizer."""

    def __init__(self, args: argparse.Namespace, start_timeout_s: float = 600.0):
        self.args, self.start_timeout_s = args, start_timeout_s
        self._conn = None
        self._process = None
        self._send_lock = threading.Lock()
        self._lock = threading.Lock()  # guards the sinks and the reported state below
        self._sinks: dict[int, Callable[[Output], None]] = {}
        self._numbers = itertools.count()
        self._load: dict[str, int] = {}
        self.stats: Counter[str] = Counter()
        self._last_error: str | None = None
        self._stopped: str | None = None  # why the child is gone, once it is
        self._reader: threading.Thread | None = None

    def start(self) -> "EngineProcess":
        context = multiprocessing.get_context("spawn")  # never fork a process that holds threads and torch state
        self._conn, child_conn = context.Pipe()
        self._process = context.Process(target=_child_main, args=(child_conn, self.args), name="lumi-engine",
                                        daemon=True)
        self._process.start()
        child_conn.close()
        if not self._conn.poll(self.start_timeout_s):
            self._process.kill()
            raise LumiError(f"the engine process did not start within {self.start_timeout_s:g} s")
        try:
            kind, payload = self._conn.recv()
        except EOFError:
            self._process.join()
            raise LumiError(f"the engine process exited while loading the model (exit code "
                            f"{self._process.exitcode})") from None
        if kind == "error":
            self._process.join()
            raise LumiError(payload)
        self.tokenizer, self.context = payload["tokenizer"], payload["context"]
        self.vocab_size, self.max_batch, self.max_waiting = payload["vocab_size"], payload["max_batch"], \
            payload["max_waiting"]
        self._load = payload["load"]
        self._reader = threading.Thread(target=self._read, name="lumi-engine-reader", daemon=True)
        self._reader.start()
        return self

    def close(self) -> None:
        if self._process is None:
            return
        try:
            self._send(("close", None))
        except EngineUnavailable:
            pass
        self._process.join(30)
        if self._process.is_alive():
            self._process.kill()
            self._process.join()
        if self._reader is not None:
            self._reader.join(5)
        self._conn.close()

    def __enter__(self) -> "EngineProcess":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    # --- what the API calls --------------------------------------------------------------------------------

    def submit(self, prompt_ids: list[int], params: SamplingParams, sink: Callable[[Output], None],
               logprobs: int | None = None, prompt_logprobs: int | None = None) -> RemoteRequest:
        checked_sampler(prompt_ids, params, self.vocab_size, self.context, "cpu")
        with self._lock:
            if self._stopped is not None:
                raise EngineUnavailable(self._stopped)
            # The engine's bound (waiting >= max_waiting + free slots), counted over requests not yet finished.
            if len(self._sinks) >= self.max_waiting + self.max_batch:
                raise QueueFull(f"{len(self._sinks)} requests are running or waiting; try again later")
            request = RemoteRequest(self, next(self._numbers), prompt_ids)
            self._sinks[request.number] = sink
        try:
            self._send(("submit", (request.number, list(prompt_ids), params, logprobs, prompt_logprobs)))
        except EngineUnavailable:
            with self._lock:
                self._sinks.pop(request.number, None)
            raise
        return request

    def load(self) -> dict[str, int]:
        with self._lock:
            return dict(self._load)

    def health(self) -> str | None:
        if self._stopped is not None:
            return self._stopped
        return None if self._last_error is None else f"the last engine step failed: {self._last_error}"

    # --- the pipe ------------------------------------------------------------------------------------------

    def _send(self, message) -> None:
        try:
            with self._send_lock:
                self._conn.send(message)
        except (OSError, ValueError) as exc:  # the child is gone (broken pipe) or the pipe is closed
            raise EngineUnavailable(self._stopped or f"the engine process is not running ({exc})") from None

    def _read(self) -> None:
        """Deliver the child's outputs to their sinks, in order; when the child is gone, fail what it held."""
        while True:
            try:
                outputs, load, stats, last_error = self._conn.recv()
            except (EOFError, OSError):
                break
            with self._lock:
                self._load, self._last_error = load, last_error
                self.stats = Counter(stats)  # replaced whole: /health reads it without the lock
                sinks = [(self._sinks.get(number), output) for number, output in outputs]
                for number, output in outputs:
                    if output.finish_reason is not None:
                        self._sinks.pop(number, None)
            for sink, output in sinks:
                if sink is not None:
                    sink(output)
        self._process.join(5)
        with self._lock:
            self._stopped = f"the engine process has stopped (exit code {self._process.exitcode})"
            orphans, self._sinks = list(self._sinks.values()), {}
        if orphans:
            log.error("%s; failing its %d requests", self._stopped, len(orphans))
        for sink in orphans:
            sink(Output("", [], FINISH_ERROR, error=self._stopped))


def _child_main(conn, args: argparse.Namespace) -> None:
    """The engine process: load the model, report, then step the engine between reading commands."""
    import signal

    from lumi.serve.options import engine_from_args  # here: the parent never loads the model

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl+C reaches the whole process group; the parent stops us
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s:%(name)s: %(message)s")
    try:
        engine = engine_from_args(args)
    except LumiError as exc:
        conn.send(("error", str(exc)))
        return
    conn.send(("ready", {"tokenizer": engine.tokenizer, "context": engine.context, "max_batch": engine.max_batch,
                         "max_waiting": engine.max_waiting, "vocab_size": engine.model.config.vocab_size,
                         "load": engine.load()}))
    requests = {}
    made: list[tuple[int, Output]] = []
    reported = engine.load()

    def sink_for(number: int) -> Callable[[Output], None]:
        return lambda output: made.append((number, output))

    import torch

    with torch.inference_mode():
        while True:
            # Block only while there is nothing to step; otherwise take what has arrived and step once.
            while conn.poll(None if not (engine.waiting or engine.running) else 0):
                try:
                    kind, payload = conn.recv()
                except EOFError:  # the parent is gone
                    return
                if kind == "close":
                    return
                if kind == "cancel":
                    if payload in requests:
                        requests[payload].cancel()
                    continue
                number, prompt_ids, params, logprobs, prompt_logprobs = payload
                try:
                    requests[number] = engine.submit(prompt_ids, params, sink_for(number), logprobs=logprobs,
                                                     prompt_logprobs=prompt_logprobs)
                except (QueueFull, LumiError) as exc:  # checked in the parent already; a race or a bug lands here
                    made.append((number, Output("", [], FINISH_ERROR, len(prompt_ids), error=str(exc))))
            if engine.waiting or engine.running:
                engine.serving_step()
            for number, output in made:
                if output.finish_reason is not None:
                    requests.pop(number, None)
            load = engine.load()
            if made or load != reported:
                conn.send((made, load, dict(engine.stats), engine.last_error))
                made, reported = [], load
