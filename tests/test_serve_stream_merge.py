"""Merged stream chunks (lumi/serve/feed.py): tokens made within one stream interval, or while the event loop lags,
arrive in one chunk per choice, and what a client reads must be what it reads from one token a chunk: the same text
(equal to the non-streamed answer at greedy), the same per-token log-probs, never a stop string, usage at the end.

The lag is made on purpose: the event loop (uvicorn in a thread of this process) is blocked for a while after the
stream has started, while the engine thread goes on making tokens."""

from __future__ import annotations

import asyncio
import time

import openai
import pytest
from serve_helpers import make_serving_dirs

from lumi.generation.engine import Engine
from lumi.serve.api import ServerSettings, create_app
from lumi.serve.checkpoint import load_for_serving
from lumi.serve.server import running_server

MODEL = "tiny-chat"
QUESTION = [{"role": "user", "content": "Where does the baker live?"}]
BLOCK_S = 0.5


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    dirs = make_serving_dirs(tmp_path_factory.mktemp("merge"), max_seq_len=256)
    model, tokenizer = load_for_serving(dirs["chat"], device="cpu")
    loops = []

    with Engine(model, tokenizer, max_batch=4) as engine:
        # interval 0 (a wake-up per token): the merging seen here is the lag's alone
        app = create_app(engine, tokenizer, ServerSettings(model_id=MODEL, stream_interval_s=0.0))

        async def remembering_its_loop(scope, receive, send):
            loops.append(asyncio.get_running_loop())
            await app(scope, receive, send)

        with running_server(remembering_its_loop) as url:
            client = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=60)
            client.models.list()  # so the loop is known
            yield {"client": client, "loop": loops[0], "engine": engine, "tokenizer": tokenizer}


def lagging(server, stream) -> list:
    """All chunks of ``stream``, the event loop blocked for BLOCK_S after the first one arrived."""
    chunks = [next(stream)]
    server["loop"].call_soon_threadsafe(time.sleep, BLOCK_S)
    return chunks + list(stream)


def test_merged_completion_chunks_keep_text_and_per_token_logprobs(server):
    client = server["client"]
    ask = dict(model=MODEL, prompt="Once upon a time", max_tokens=40, temperature=0, logprobs=2, n=2)
    plain = client.completions.create(**ask)
    chunks = lagging(server, client.completions.create(**ask, stream=True, stream_options={"include_usage": True}))

    for index, expected in enumerate(plain.choices):
        parts = [c.choices[0] for c in chunks if c.choices and c.choices[0].index == index]
        merged = [p.logprobs for p in parts if p.logprobs]
        assert max(len(lp.tokens) for lp in merged) > 1, "the blocked loop should have merged tokens"
        assert "".join(p.text for p in parts) == expected.text
        assert [t for lp in merged for t in lp.tokens] == expected.logprobs.tokens
        assert [v for lp in merged for v in lp.token_logprobs] == pytest.approx(expected.logprobs.token_logprobs,
                                                                               abs=1e-5)
        assert [t for lp in merged for t in lp.top_logprobs] == [
            pytest.approx(top, abs=1e-5) for top in expected.logprobs.top_logprobs]
        assert [o for lp in merged for o in lp.text_offset] == expected.logprobs.text_offset
        assert [p.finish_reason for p in parts if p.finish_reason] == [expected.finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == plain.usage.completion_tokens


def test_merged_chat_chunks_never_emit_a_stop_string(server):
    client = server["client"]
    ask = dict(model=MODEL, messages=QUESTION, max_tokens=60, temperature=0)
    full = client.chat.completions.create(**ask).choices[0].message.content
    stop = full[len(full) // 2:len(full) // 2 + 6]  # well inside the answer: it spans tokens
    assert len(stop.strip()) > 2
    expected = full[:full.index(stop)]

    plain = client.chat.completions.create(**ask, stop=[stop])
    assert plain.choices[0].message.content == expected and plain.choices[0].finish_reason == "stop"
    chunks = lagging(server, client.chat.completions.create(**ask, stop=[stop], stream=True,
                                                            stream_options={"include_usage": True}))
    deltas = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(deltas) < chunks[-1].usage.completion_tokens, "the blocked loop should have merged tokens"
    assert "".join(deltas) == expected
    assert not any(stop in delta for delta in deltas)
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["stop"]


def test_stream_interval_merges_what_one_interval_makes(server):
    """An interval longer than the whole answer: the first token goes out alone (it wakes the loop at once), the
    rest waits for the finish; the text is the same."""
    app = create_app(server["engine"], server["tokenizer"], ServerSettings(model_id=MODEL, stream_interval_s=60.0))
    ask = dict(model=MODEL, prompt="Once upon a time", max_tokens=30, temperature=0)
    with running_server(app) as url:
        client = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=60)
        expected = client.completions.create(**ask).choices[0].text
        chunks = list(client.completions.create(**ask, stream=True))
    texts = [c.choices[0].text for c in chunks if c.choices[0].text]
    assert len(texts) <= 2 and "".join(texts) == expected
    assert chunks[-1].choices[0].finish_reason == "length"


@pytest.mark.parametrize("value", ["-1", "1001", "nan"])
def test_stream_interval_flag_is_range_checked(value, tmp_path):
    from lumi.cli import parse_args
    from lumi.core.errors import LumiError
    from lumi.serve.settings import settings_from_args

    args = parse_args(["serve", "--model-path", str(tmp_path), "--stream-interval-ms", value])
    with pytest.raises(LumiError, match="--stream-interval-ms must be in 0..1000"):
        settings_from_args(args)
