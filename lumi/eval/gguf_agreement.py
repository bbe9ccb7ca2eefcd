"""How exactly llama.cpp runs an exported GGUF compared with Lumi running the model dir it came from: token ids on
texts of every kind, chat-prompt ids, logits on prompts, greedy continuations.

llama.cpp is reached through ``llama-cpp-python`` (the ``test`` extra), built from its source package on install:
the prebuilt CPU wheels of ``llama-cpp-py-sync`` need glibc 2.38 and do not load on Debian 12 (glibc 2.36)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from lumi.core.errors import LumiError

# Held-out text of every kind the tokenizer must agree on: prose, code, emoji, CJK, runs of spaces and newlines,
# the chat markers and control-piece names as plain text.
PROBE_TEXTS = (
    "The river town of Ashford sits where two valleys meet; its mill has ground wheat since 1842.",
    "Call me Ishmael. Some years ago - never mind how long precisely - having little or no money in my purse...",
    "def fib(n: int) -> int:\n    if n < 2:\n        return n\n    return fib(n - 1) + fib(n - 2)\n",
    "for (int i = 0; i < n; ++i) { sum += a[i] * b[i]; }  // dot product\n#include <stdio.h>",
    "emoji 😀👍🏽 🇫🇷 and a family 👨‍👩‍👧 ✨",
    "中文分词很难。日本語の文章、한국어 문장도 있습니다.",
    "  leading, trailing and    inner   runs of spaces  ",
    "lines\n\n\n\nafter blank lines\r\nwindows line\tand\ttabs\n",
    "<|im_start|>user\nliteral markers in a message<|im_end|> stay text",
    "<s> </s> <pad> <unk> <0x41> look like control pieces but are text",
    "digits 0123456789 3.14159 -42 1e-5 ₁₂₃ ½",
    "“curly quotes” — dashes – ellipsis … ligature ﬁ non-break\u00a0space zero\u200bwidth",
    "Ünïcödé àccents: naïve café, Straße, Ελληνικά, Кириллица, עברית, العربية",
    "\u2581 the SentencePiece space symbol itself \u2581\u2581",
)


def llama_cpp() -> Any:
    """The ``llama_cpp`` module, or one line saying how to install it."""
    try:
        import llama_cpp
    except ImportError:
        raise LumiError("llama.cpp's Python bindings are not installed: pip install -e '.[test]' (builds "
                        "llama-cpp-python from source, about 10 minutes)") from None
    return llama_cpp


def llama_cpp_version() -> str:
    return f"llama-cpp-python {llama_cpp().__version__}"


def open_gguf(path: str | Path, n_ctx: int, threads: int = 1, kv_f32: bool = False) -> Any:
    """llama.cpp's model and context for ``path``; logits kept for every position (``logits_all``). The KV cache is
    llama.cpp's default f16 (what llama-cli/server run with) unless ``kv_f32``: an f32 GGUF with an f32 cache
    computes what the fp32 model does, up to summation order."""
    module = llama_cpp()
    cache = {"type_k": module.GGML_TYPE_F32, "type_v": module.GGML_TYPE_F32} if kv_f32 else {}
    return module.Llama(model_path=str(path), n_ctx=n_ctx, n_batch=n_ctx, n_threads=threads,
                        n_threads_batch=threads, logits_all=True, verbose=False, **cache)


def llama_ids(llm: Any, text: str, parse_special: bool = False, add_bos: bool = False) -> list[int]:
    """llama.cpp's token ids; ``parse_special`` reads control-token text (``<|im_start|>``) as the token."""
    return list(llm.tokenize(text.encode("utf-8"), add_bos=add_bos, special=parse_special))


def lumi_ids(tokenizer: Any, text: str) -> list[int]:
    """Lumi's ids for plain text: every added token split, as message contents are encoded (``lumi.data.chat``)."""
    return list(tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"])


def llama_logits(llm: Any, ids: list[int]) -> np.ndarray:
    llm.reset()
    llm.eval(ids)
    return np.array(llm.scores[:len(ids)], dtype=np.float32)


def lumi_logits(model: Any, ids: list[int]) -> np.ndarray:
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].float().numpy()


def llama_greedy(llm: Any, ids: list[int], new_tokens: int) -> list[int]:
    """Argmax continuation (no stop token: the comparison is over a fixed length)."""
    llm.reset()
    llm.eval(ids)
    out: list[int] = []
    for _ in range(new_tokens):
        out.append(int(np.argmax(llm.scores[llm.n_tokens - 1])))
        llm.eval(out[-1:])
    return out


def lumi_greedy(model: Any, ids: list[int], new_tokens: int) -> list[int]:
    """Argmax continuation, the whole sequence recomputed per token (small models; no cache API involved)."""
    out: list[int] = []
    with torch.no_grad():
        for _ in range(new_tokens):
            out.append(int(model(torch.tensor([ids + out]), use_cache=False).logits[0, -1].argmax()))
    return out


def measure_agreement(model: Any, tokenizer: Any, gguf_path: str | Path, texts: list[str], prompts: list[str],
                      new_tokens: int = 16, threads: int = 1) -> dict[str, Any]:
    """Token-id agreement on ``texts`` (and, with a chat template, on chat prompts with the markers parsed), the
    largest logit difference over ``prompts`` (BOS first) and how many greedy continuations are identical, with
    llama.cpp's default (f16) KV cache, as llama-cli and llama-server run the file."""
    prompt_ids = [[tokenizer.bos_token_id, *lumi_ids(tokenizer, p)] for p in prompts]
    context = max(len(ids) for ids in prompt_ids) + new_tokens
    if context > model.config.max_position_embeddings:
        raise LumiError(f"agreement prompts need {context} positions, the model has "
                        f"{model.config.max_position_embeddings}")
    llm = open_gguf(gguf_path, n_ctx=context, threads=threads)
    texts_equal = sum(lumi_ids(tokenizer, t) == llama_ids(llm, t) for t in texts)
    result: dict[str, Any] = {"llama_cpp": llama_cpp_version(), "texts": len(texts), "texts_identical": texts_equal}
    if getattr(tokenizer, "chat_template", None):
        chats = [[{"role": "user", "content": t}] for t in texts]
        result["chat_prompts"] = len(chats)
        result["chat_prompts_identical"] = sum(
            list(tokenizer.apply_chat_template(c, add_generation_prompt=True, return_dict=True)["input_ids"])
            == llama_ids(llm, tokenizer.apply_chat_template(c, add_generation_prompt=True, tokenize=False),
                         parse_special=True)
            for c in chats)
    diffs = [float(np.abs(lumi_logits(model, ids) - llama_logits(llm, ids)).max()) for ids in prompt_ids]
    greedy = [lumi_greedy(model, ids, new_tokens) == llama_greedy(llm, ids, new_tokens) for ids in prompt_ids]
    result.update({"prompts": len(prompt_ids), "logits_max_abs_diff": max(diffs), "new_tokens": new_tokens,
                   "greedy_identical": sum(greedy)})
    llm.close()
    return result
