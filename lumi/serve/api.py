"""The OpenAI-compatible HTTP API (FastAPI): chat and text completions, plain or streamed as server-sent events.

Routes: ``POST /v1/chat/completions``, ``POST /v1/completions``, ``GET /v1/models``, vLLM's ``POST /tokenize`` /
``POST /detokenize`` and ``GET /metrics`` (lumi/serve/metrics.py), ``GET /health`` and ``GET /`` (the web chat page).
Responses and stream chunks have OpenAI's shapes (lumi/serve/responses.py: ``n`` choices, several prompts,
``logprobs``, ``echo``; a stream ends with ``data: [DONE]``), so the ``openai`` client, lm-eval's
``local-completions`` and tools built on them work unchanged. Errors are OpenAI's error JSON (lumi/serve/errors.py).

Safety: the key (when set) is checked before anything else reads the request (a middleware, so a request without
it is a 401 whatever its body) and compared in constant time; CORS is off unless origins are given; request bodies
are capped; every sampling field is range-checked (400 naming the field); prompts are tokenized off the event loop
(one worker thread), so a huge prompt never stalls the other streams; a client that goes away cancels its
generation at the engine's next step.
"""

from __future__ import annotations

import asyncio
import hmac
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator
from starlette.exceptions import HTTPException as StarletteHTTPException
from transformers import PreTrainedTokenizerBase

from lumi.core.errors import LumiError
from lumi.generation.engine import Engine, EngineUnavailable, PromptTooLong, QueueFull
from lumi.generation.sampling import MAX_SEED, MAX_STOP_CHARS, SamplingParams, StopString
from lumi.serve.errors import APIError, error_response
from lumi.serve.feed import OutputFeed
from lumi.serve.metrics import CONTENT_TYPE_LATEST, ServerMetrics
from lumi.serve.prompts import chat_ids, completion_ids, has_chat_template
from lumi.serve.responses import Choice, Pieces, choice_body, collect, stream_events, usage

if TYPE_CHECKING:
    from lumi.serve.engine_process import EngineProcess

WEB_PAGE = Path(__file__).resolve().parent / "web" / "index.html"
DEFAULT_MAX_BODY_BYTES = 1 << 20
# A token a chunk, as OpenAI and vLLM stream. With the engine in its own process a wake-up of the event loop no longer
# stalls decoding: measured idle, one streamed client ran at 0.97x model.generate with 0 ms and 0.93x with 10 ms, and
# 8 clients at 4.2x and 3.7x one (docs/BENCHMARKS.md). --stream-interval-ms N merges the tokens of N ms per chunk.
DEFAULT_STREAM_INTERVAL_S = 0.0
OPEN_PATHS = ("/", "/health")  # everything else (/metrics too: scrapers send a bearer token) needs the key
MAX_CHOICES = 64  # prompts x n in one request
CLIENT_CLOSED = 499  # nginx's "client closed request": logged for a non-streamed request whose client went away


@dataclass
class ServerSettings:
    model_id: str
    api_key: str | None = None
    cors_origins: list[str] = field(default_factory=list)
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    stream_interval_s: float = DEFAULT_STREAM_INTERVAL_S


# --- request bodies: OpenAI's fields; the sampling fields (with their limits) are SamplingParams' own ---------------

class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    include_usage: bool = False


class _GenerationRequest(SamplingParams):
    model: str
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = Field(1, ge=1, le=MAX_CHOICES, description="choices per prompt (with a seed, choice i uses seed + i)")
    user: str | None = None
    stop: list[StopString] = Field(default_factory=list, max_length=16,
                                   description=f"up to 16 stop strings of at most {MAX_STOP_CHARS} characters")

    @field_validator("stop", mode="before")
    @classmethod
    def _one_or_more(cls, value: Any) -> Any:
        return [] if value is None else [value] if isinstance(value, str) else value

    def sampling(self) -> SamplingParams:
        return SamplingParams(**self.model_dump(include=set(SamplingParams.model_fields)))

    def engine_logprobs(self) -> int | None:
        """How many top log-probs the engine reports per generated token (None: none asked)."""
        raise NotImplementedError


class TextPart(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: Literal["system", "user", "assistant"]
    content: str | list[TextPart]  # OpenAI's content parts: text ones only (a text model)
    name: str | None = None

    @field_validator("content")
    @classmethod
    def _joined_text(cls, value: str | list[TextPart]) -> str:
        return value if isinstance(value, str) else "".join(part.text for part in value)


class ChatCompletionRequest(_GenerationRequest):
    messages: list[ChatMessage] = Field(min_length=1)
    logprobs: bool | None = Field(False, description="log-probabilities of the chosen tokens")
    top_logprobs: int | None = Field(None, ge=0, le=20, description="and of the most likely tokens at each step")
    max_completion_tokens: int | None = Field(None, ge=1, le=1 << 20, description="OpenAI's newer name for max_tokens")

    @field_validator("top_logprobs")
    @classmethod
    def _top_needs_logprobs(cls, value: int | None, info: ValidationInfo) -> int | None:
        if value and not info.data.get("logprobs"):
            raise ValueError("top_logprobs needs logprobs: true")
        return value

    def engine_logprobs(self) -> int | None:
        return (self.top_logprobs or 0) if self.logprobs else None

    def sampling(self) -> SamplingParams:
        params = super().sampling()
        if self.max_completion_tokens is not None:
            params.max_tokens = self.max_completion_tokens
        return params


class CompletionRequest(_GenerationRequest):
    prompt: str | list[str] | list[int] | list[list[int]] = Field(
        description="a text, a list of texts, token ids, or a list of token-id lists (each one prompt)")
    logprobs: int | None = Field(None, ge=0, le=20,
                                 description="log-probabilities of the chosen tokens and of this many likeliest")
    echo: bool = Field(False, description="the prompt before the answer (and its tokens' log-probs with logprobs)")
    parse_special: bool = Field(True, description="marker text in the prompt (<|im_start|>, </s>) becomes control "
                                                  "tokens, as llama-server does; false: it stays text")

    @field_validator("prompt")
    @classmethod
    def _prompts(cls, value: Any) -> list[str] | list[list[int]]:
        prompts = [value] if isinstance(value, str) or (value and isinstance(value[0], int)) else value
        if not 1 <= len(prompts) <= MAX_CHOICES:
            raise ValueError(f"give 1..{MAX_CHOICES} prompts")
        return prompts

    def engine_logprobs(self) -> int | None:
        return self.logprobs


class TokenizeRequest(BaseModel):
    """vLLM's ``/tokenize``: a ``prompt`` (as /v1/completions encodes it) or ``messages`` (as the chat route does)."""

    model_config = ConfigDict(extra="forbid")
    model: str
    prompt: str | None = None
    messages: list[ChatMessage] | None = None
    parse_special: bool = True


class DetokenizeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str
    tokens: list[int] = Field(max_length=1 << 20)


# --- the app -------------------------------------------------------------------------------------------------------

class BodySizeLimit:
    """ASGI middleware: reads at most ``limit`` bytes of a request body, else answers 413 (before any route runs).
    The body is then replayed to the app; later ``receive`` calls (the client's disconnect) pass through."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                return await self.app(scope, _replay([message], receive), send)
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            more = message.get("more_body", False)
            if size > self.limit:
                response = error_response(413, f"request body over {self.limit} bytes")
                return await response(scope, receive, send)
        return await self.app(scope, _replay([{"type": "http.request", "body": b"".join(chunks)}], receive), send)


class RequireKey:
    """ASGI middleware: without ``Authorization: Bearer KEY`` (compared in constant time) a request to anything but
    ``OPEN_PATHS`` is answered 401 before its body is read or validated."""

    def __init__(self, app, key: str):
        self.app, self.key = app, key.encode()

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS:
            return await self.app(scope, receive, send)
        header = dict(scope["headers"]).get(b"authorization", b"")
        scheme, _, given = header.partition(b" ")
        if scheme.lower() != b"bearer" or not hmac.compare_digest(given.strip(), self.key):
            response = error_response(401, "missing or wrong API key (send 'Authorization: Bearer KEY')",
                                      "authentication_error")
            return await response(scope, receive, send)
        return await self.app(scope, receive, send)


def _replay(messages: list[dict], receive):
    async def replayed():
        return messages.pop(0) if messages else await receive()
    return replayed


def create_app(engine: Engine | EngineProcess, tokenizer: PreTrainedTokenizerBase, settings: ServerSettings) -> FastAPI:
    app = FastAPI(title="Lumi-Lab", docs_url=None, redoc_url=None, openapi_url=None)
    created = int(time.time())
    # One thread: tokenization leaves the event loop, and the tokenizer is never entered by two encodes at once.
    tokenize_pool = ThreadPoolExecutor(1, thread_name_prefix="lumi-tokenize")
    pieces = Pieces(tokenizer)
    metrics = ServerMetrics(engine, settings.model_id)

    @app.exception_handler(APIError)
    async def _api_error(_request: Request, exc: APIError):
        return error_response(exc.status, exc.message, exc.kind, exc.param, exc.code)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request: Request, exc: RequestValidationError):
        """400 as OpenAI answers any invalid request (FastAPI's default is 422), naming the field."""
        errors = exc.errors()
        if any(e.get("type") == "json_invalid" for e in errors):
            return error_response(400, "the request body is not valid JSON")
        message = "; ".join(f"{'.'.join(str(p) for p in e.get('loc', ()) if p != 'body') or 'body'}: {e.get('msg')}"
                            for e in errors)
        first = next((e.get("loc") for e in errors), ())
        return error_response(400, message, param=str(first[1]) if first and len(first) > 1 else None)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_request: Request, exc: StarletteHTTPException):
        return error_response(exc.status_code, str(exc.detail), "not_found_error" if exc.status_code == 404
                              else "invalid_request_error")

    def check_model(name: str) -> None:
        if name != settings.model_id:
            raise APIError(404, f"model {name!r} not found; this server serves {settings.model_id!r}",
                           "not_found_error", "model")

    def submit(body: "_GenerationRequest", prompts: list[list[int]], echoes: list[str | None],
               feed: OutputFeed) -> list[Choice]:
        """One engine request per prompt and choice (``n`` per prompt); all or none (a refusal cancels the rest)."""
        choices = []

        def sink_for(index: int):
            timer = metrics.timer()

            def sink(output) -> None:
                timer.observe(output)
                feed.put(index, output)
            return sink

        params = body.sampling()
        logprobs = body.engine_logprobs()
        prompt_logprobs = logprobs if getattr(body, "echo", False) and logprobs is not None else None
        try:
            for prompt_ids, echo in zip(prompts, echoes):
                for sample in range(body.n):
                    seeded = params if params.seed is None or sample == 0 else \
                        params.model_copy(update={"seed": (params.seed + sample) % (MAX_SEED + 1)})
                    request = engine.submit(prompt_ids, seeded, sink_for(len(choices)), logprobs=logprobs,
                                            prompt_logprobs=prompt_logprobs)
                    choices.append(Choice(len(choices), request, echo))
        except (QueueFull, EngineUnavailable, LumiError) as exc:
            for choice in choices:
                choice.request.cancel()
            if isinstance(exc, QueueFull):
                raise APIError(503, f"server busy: {exc}", "server_error") from None
            if isinstance(exc, EngineUnavailable):
                raise APIError(503, f"the model is not available: {exc}", "server_error") from None
            if isinstance(exc, PromptTooLong):
                raise APIError(400, str(exc), code="context_length_exceeded") from None
            raise APIError(400, str(exc)) from None
        return choices

    async def encode(make, *args) -> list[int]:
        try:
            return await asyncio.get_running_loop().run_in_executor(tokenize_pool, make, *args)
        except LumiError as exc:
            raise APIError(400, str(exc)) from None

    @app.get("/health")
    async def health():
        problem = engine.health()
        body = {"status": "ok" if problem is None else "error", "model": settings.model_id,
                "chat_template": has_chat_template(tokenizer), **engine.load(),
                "cancelled": engine.stats["cancelled"], "errors": engine.stats["errors"],
                **({"error": problem} if problem else {})}
        return JSONResponse(body, status_code=200 if problem is None else 503)

    @app.get("/metrics")
    async def prometheus_metrics():
        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/", response_class=HTMLResponse)
    async def web_page():
        return HTMLResponse(WEB_PAGE.read_text(encoding="utf-8"))

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": settings.model_id, "object": "model", "created": created,
                                            "owned_by": "lumi-lab", "max_model_len": engine.context}]}

    @app.post("/tokenize")
    async def tokenize(body: TokenizeRequest):
        check_model(body.model)
        if (body.prompt is None) == (body.messages is None):
            raise APIError(400, "give exactly one of prompt and messages", param="prompt")
        if body.messages is not None:
            ids = await encode(chat_ids, tokenizer, [m.model_dump(exclude_none=True) for m in body.messages])
        else:
            ids = await encode(completion_ids, tokenizer, body.prompt, body.parse_special)
        return {"count": len(ids), "max_model_len": engine.context, "tokens": ids}

    @app.post("/detokenize")
    async def detokenize(body: DetokenizeRequest):
        check_model(body.model)
        if any(not 0 <= i < len(tokenizer) for i in body.tokens):
            raise APIError(400, f"token ids must be in 0..{len(tokenizer) - 1}", param="tokens")
        return {"prompt": tokenizer.decode(body.tokens)}

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatCompletionRequest, http: Request):
        check_model(body.model)
        messages = [m.model_dump(exclude_none=True) for m in body.messages]
        prompt_ids = await encode(chat_ids, tokenizer, messages)
        return await respond(http, body, [prompt_ids], [None], chat=True)

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, http: Request):
        check_model(body.model)
        prompts, echoes = [], []
        for prompt in body.prompt:  # token ids are taken as they are (no BOS added), as vLLM takes them
            ids = prompt if isinstance(prompt, list) else \
                await encode(completion_ids, tokenizer, prompt, body.parse_special)
            prompts.append(ids)
            echoes.append(None if not body.echo else prompt if isinstance(prompt, str) else tokenizer.decode(ids))
        return await respond(http, body, prompts, echoes, chat=False)

    async def respond(http: Request, body: _GenerationRequest, prompts: list[list[int]], echoes: list[str | None],
                      chat: bool):
        if len(prompts) * body.n > MAX_CHOICES:
            raise APIError(400, f"prompts x n must be at most {MAX_CHOICES}, got {len(prompts)} x {body.n}",
                           param="n")
        feed = OutputFeed(asyncio.get_running_loop(), streaming=body.stream,
                          interval_s=settings.stream_interval_s)
        choices = submit(body, prompts, echoes, feed)
        response_id = f"{'chatcmpl' if chat else 'cmpl'}-{choices[0].request.id}"
        common = {"id": response_id, "created": int(time.time()), "model": settings.model_id}
        wants_logprobs = body.engine_logprobs() is not None
        prompt_counts = [len(p) for p in prompts]
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            return StreamingResponse(stream_events(choices, feed, common, chat, wants_logprobs, include_usage,
                                                   prompt_counts, pieces),
                                     media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        if not await collect(http, choices, feed):  # the client went away: nobody reads this answer
            return Response(status_code=CLIENT_CLOSED)
        failed = next((c.final for c in choices if c.final.finish_reason == "error"), None)
        if failed is not None:
            raise APIError(500, f"generation failed: {failed.error}", "server_error")
        return {**common, "object": "chat.completion" if chat else "text_completion",
                "choices": [choice_body(c, chat, wants_logprobs, pieces) for c in choices],
                "usage": usage(choices, prompt_counts)}

    return _with_middleware(app, settings)


def _with_middleware(app: FastAPI, settings: ServerSettings):
    app.add_middleware(BodySizeLimit, limit=settings.max_body_bytes)
    if settings.api_key is not None:
        app.add_middleware(RequireKey, key=settings.api_key)
    if settings.cors_origins:  # outermost: preflights and 401s carry the CORS headers too
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins, allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type"])
    return app
