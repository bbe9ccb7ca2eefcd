"""What clients of vLLM and llama-server rely on beyond plain generation, through the real ``openai`` client:
log-probs (chat and completions, checked against a full forward pass of the model), echo with prompt log-probs,
token-id prompts, several prompts and ``n`` choices, ``logit_bias``, ``/tokenize`` and ``/detokenize``, ``/metrics``."""

from __future__ import annotations

import math

import httpx2 as httpx  # openai 3.x brings httpx2 (the httpx API)
import openai
import pytest
import torch
from serve_helpers import serving

from lumi.serve.api import ServerSettings
from lumi.serve.prompts import chat_ids, completion_ids

MODEL = "tiny"
QUESTION = [{"role": "user", "content": "Where does the baker live?"}]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with serving(tmp_path_factory.mktemp("extras"), ServerSettings(model_id=MODEL), max_seq_len=256,
                 max_batch=4) as served:
        yield {**served, "client": openai.OpenAI(base_url=served["url"] + "/v1", api_key="none", max_retries=0,
                                                 timeout=60)}


def reference_logprobs(model, ids: list[int]) -> torch.Tensor:
    """log-softmax of a plain full forward pass: row i scores token i + 1."""
    with torch.inference_mode():
        return torch.log_softmax(model(torch.tensor([ids])).logits[0].float(), dim=-1)


def test_chat_logprobs_and_top_logprobs_are_the_models(server):
    client, tokenizer = server["client"], server["tokenizer"]
    reply = client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=6, temperature=0,
                                           logprobs=True, top_logprobs=3)
    content = reply.choices[0].logprobs.content
    prompt = chat_ids(tokenizer, QUESTION)
    generated = [tokenizer.convert_tokens_to_ids(c.token.replace(" ", "\u2581")) for c in content]
    assert len(content) == reply.usage.completion_tokens
    reference = reference_logprobs(server["model"], prompt + generated)
    for position, entry in enumerate(content):
        row = reference[len(prompt) - 1 + position]
        assert entry.logprob == pytest.approx(row[generated[position]].item(), abs=1e-4)
        assert len(entry.top_logprobs) == 3
        assert entry.top_logprobs[0].logprob == pytest.approx(row.max().item(), abs=1e-4)
        assert entry.top_logprobs[0].token == entry.token  # greedy: the chosen token is the likeliest


def test_completions_echo_scores_the_prompt_as_a_full_forward_does(server):
    client, tokenizer = server["client"], server["tokenizer"]
    ids = completion_ids(tokenizer, "The baker lives in the old town by the river.")
    reply = client.completions.create(model=MODEL, prompt=ids, max_tokens=1, temperature=0, logprobs=1, echo=True)
    logprobs = reply.choices[0].logprobs
    assert len(logprobs.token_logprobs) == len(ids) + 1 and logprobs.token_logprobs[0] is None
    reference = reference_logprobs(server["model"], ids)
    expected = [reference[i - 1, ids[i]].item() for i in range(1, len(ids))]
    assert logprobs.token_logprobs[1:len(ids)] == pytest.approx(expected, abs=1e-4)
    assert all(len(top) == 1 for top in logprobs.top_logprobs[1:])
    assert reply.choices[0].text.startswith(tokenizer.decode(ids))
    assert reply.usage.prompt_tokens == len(ids)  # token ids are taken as given (no BOS added)


def test_several_prompts_and_n_choices(server):
    client = server["client"]
    single = client.completions.create(model=MODEL, prompt="The smith", max_tokens=8, seed=7)
    many = client.completions.create(model=MODEL, prompt=["The smith", "The baker"], max_tokens=8, seed=7, n=3)
    assert [c.index for c in many.choices] == list(range(6))
    assert many.choices[0].text == single.choices[0].text  # choice i of a prompt uses seed + i
    assert len({c.text for c in many.choices[:3]}) > 1
    with pytest.raises(openai.BadRequestError) as caught:
        client.completions.create(model=MODEL, prompt=["a"] * 8, max_tokens=1, n=9)
    assert caught.value.body["param"] == "n"
    chunks = list(client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=4, n=2, stream=True))
    finished = {c.choices[0].index for c in chunks if c.choices and c.choices[0].finish_reason}
    assert finished == {0, 1}


def test_logit_bias_forces_a_token(server):
    client, tokenizer = server["client"], server["tokenizer"]
    token = tokenizer.convert_tokens_to_ids("\u2581the")
    assert token != tokenizer.unk_token_id
    reply = client.completions.create(model=MODEL, prompt="The baker", max_tokens=5, temperature=1, seed=1,
                                      logit_bias={str(token): 100})
    assert reply.choices[0].text.split() == ["the"] * 5
    with pytest.raises(openai.BadRequestError, match="logit_bias"):
        client.completions.create(model=MODEL, prompt="x", max_tokens=1, logit_bias={"999999": 1})
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model=MODEL, prompt="x", max_tokens=1, logit_bias={"5": 101})


def test_tokenize_and_detokenize(server):
    tokenizer = server["tokenizer"]
    text = "The baker lives by the river."
    answer = httpx.post(server["url"] + "/tokenize", json={"model": MODEL, "prompt": text}, timeout=20).json()
    assert answer["tokens"] == completion_ids(tokenizer, text) and answer["count"] == len(answer["tokens"])
    assert answer["max_model_len"] == 256
    chat = httpx.post(server["url"] + "/tokenize", json={"model": MODEL, "messages": QUESTION}, timeout=20).json()
    assert chat["tokens"] == chat_ids(tokenizer, QUESTION)
    back = httpx.post(server["url"] + "/detokenize", json={"model": MODEL, "tokens": answer["tokens"]}, timeout=20)
    assert text in back.json()["prompt"]
    assert httpx.post(server["url"] + "/detokenize", json={"model": MODEL, "tokens": [10 ** 9]},
                      timeout=20).status_code == 400


def test_metrics_are_prometheus_text_with_vllm_names(server):
    client = server["client"]
    before = metric(server, "vllm:generation_tokens_total")
    reply = client.completions.create(model=MODEL, prompt="The baker", max_tokens=5, temperature=0)
    text = httpx.get(server["url"] + "/metrics", timeout=20).text
    for name in ("vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:prompt_tokens_total",
                 "vllm:time_to_first_token_seconds_bucket", "vllm:e2e_request_latency_seconds_bucket",
                 "vllm:request_success_total"):
        assert name in text, name
    assert metric(server, "vllm:generation_tokens_total") == before + reply.usage.completion_tokens


def metric(server, name: str) -> float:
    text = httpx.get(server["url"] + "/metrics", timeout=20).text
    values = [float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
              if line.startswith(name + " ") or line.startswith(name + "{")]
    return math.fsum(values)
