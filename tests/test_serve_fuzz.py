"""A bounded fuzz of the API on loopback: a fixed number of requests (seeded) with random and hostile field values
and bodies, sent concurrently with ordinary requests. Every answer is an expected status (never a 500 or a hang),
every ordinary request is answered 200, and afterwards no request is left running or waiting and no slot leaked."""

from __future__ import annotations

import json
import random
from concurrent.futures import ThreadPoolExecutor

import httpx2 as httpx  # openai 3.x brings httpx2 (the httpx API)
import pytest
from serve_helpers import serving

from lumi.serve.api import ServerSettings

KEY = "fuzz-key"
MODEL = "tiny"
REQUESTS = 160
EXPECTED = {200, 400, 401, 404, 413, 503}
FIELDS = ["max_tokens", "max_completion_tokens", "temperature", "top_p", "top_k", "min_p", "repetition_penalty",
          "frequency_penalty", "presence_penalty", "seed", "stop", "n", "logprobs", "top_logprobs", "echo",
          "logit_bias", "stream", "stream_options", "user", "parse_special", "model"]
HOSTILE_VALUES = [None, True, False, 0, -1, 1, 2, 3, 0.5, -0.0, 1e-40, 1e-300, 1e300, 2 ** 63, 2 ** 64 + 1, -2 ** 70,
                  10 ** 40, "", "x", "NaN", "1", "\u0000", "<|im_end|>", "\ud7ff" * 50, "a" * 5000, [], [1], ["x"] * 20,
                  [None], {}, {"include_usage": True}, {"5": 100}, {"-1": 1}, {"x": 1}, {"999999": 5}, [[1, 2]]]
VALID = {"max_tokens": [1, 8], "max_completion_tokens": [3], "temperature": [0, 0.7, 1e-40, 2],
         "top_p": [0.1, 1], "top_k": [0, 1, 10 ** 6], "min_p": [0, 0.5], "repetition_penalty": [0.01, 1.3, 10],
         "frequency_penalty": [-2, 2], "presence_penalty": [1], "seed": [0, 2 ** 63 - 1], "stop": ["e", ["a", "b"]],
         "n": [1, 2], "logprobs": [None], "top_logprobs": [None], "echo": [False], "logit_bias": [{"5": 100}, {}],
         "stream": [True, False], "stream_options": [None], "user": ["u"], "parse_special": [True, False],
         "model": [MODEL]}
RAW_BODIES = [b"", b"{", b"null", b"[]", b"\xff\xfe\x00", b'{"model": "tiny", "prompt": ', b"[" * 10000 + b"]" * 10000,
              b'{"model": "tiny", "prompt": "' + b"\xc3\x28" * 10 + b'"}', b'{"model": "tiny", "prompt": NaN}',
              b"x" * (70 << 10)]


@pytest.fixture(scope="module", params=["engine in a thread", "engine process (lumi serve)"])
def server(tmp_path_factory, request):
    with serving(tmp_path_factory.mktemp("fuzz"), ServerSettings(model_id=MODEL, api_key=KEY, max_body_bytes=64 << 10),
                 max_seq_len=128, in_process=request.param == "engine in a thread", max_batch=3,
                 max_waiting=6) as served:
        yield served["url"]


def hostile_request(rng: random.Random) -> tuple[str, bytes, dict]:
    path = rng.choice(["/v1/chat/completions", "/v1/completions", "/tokenize", "/detokenize"])
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {KEY}"}
    if rng.random() < 0.1:
        headers.pop("Authorization") if rng.random() < 0.5 else headers.update(Authorization="Bearer wrong")
    if rng.random() < 0.15:
        return path, rng.choice(RAW_BODIES), headers
    body: dict = {"model": MODEL, "max_tokens": rng.randint(1, 12)}
    if path.endswith("chat/completions") or rng.random() < 0.05:
        body["messages"] = rng.choice([[{"role": "user", "content": "hi <|im_start|>system"}]] * 6 +
                                      [[{"role": "robot", "content": "x"}], [], "hi", [{"content": 1}]])
    if path != "/v1/chat/completions" or rng.random() < 0.05:
        body["prompt"] = rng.choice(["The baker", "The baker", [1, 2, 3], [[2, 40], [2, 41]], ["a", "b"], "",
                                     [], [10 ** 9], None, "</s>" * 30, "word " * 200])
    if path == "/detokenize":
        body["tokens"] = rng.choice([[1, 2], [-5], [10 ** 12], "x", []])
    if path in ("/tokenize", "/detokenize"):
        body.pop("max_tokens")
        return path, json.dumps(body).encode(), headers
    for name in rng.sample(FIELDS, rng.randint(1, 4)):
        body[name] = rng.choice(VALID[name] if rng.random() < 0.75 else HOSTILE_VALUES)
    return path, json.dumps(body).encode(), headers


def test_fuzzed_requests_never_break_the_server(server):
    rng = random.Random(20261207)
    cases = [hostile_request(rng) for _ in range(REQUESTS)]
    ordinary = {"model": MODEL, "messages": [{"role": "user", "content": "Where does the baker live?"}],
                "max_tokens": 4, "temperature": 0}

    def send(case) -> tuple[int, bytes]:
        path, content, headers = case
        try:
            response = httpx.post(server + path, content=content, headers=headers, timeout=60)
        except httpx.HTTPError as exc:  # a hang or a dropped connection is a failure, reported with its case
            return -1, repr(exc).encode()
        return response.status_code, response.content

    def ordinary_requests() -> list[int]:
        codes = []
        for _ in range(8):
            response = httpx.post(server + "/v1/chat/completions", json=ordinary, timeout=60,
                                  headers={"Authorization": f"Bearer {KEY}"})
            codes.append(response.status_code)
        return codes

    with ThreadPoolExecutor(4) as pool:
        canary = pool.submit(ordinary_requests)
        answers = list(pool.map(send, cases))
        ordinary_codes = canary.result()

    unexpected = [(case[0], case[1][:200], status, content[:300]) for case, (status, content) in zip(cases, answers)
                  if status not in EXPECTED]
    assert not unexpected, unexpected
    assert sum(status == 200 for status, _ in answers) >= 10  # the fuzz also reaches generation
    assert all(code in (200, 503) for code in ordinary_codes) and ordinary_codes.count(200) >= 4, ordinary_codes
    health = httpx.get(server + "/health", timeout=30).json()
    for _ in range(200):
        if health["running"] == 0 and health["waiting"] == 0:
            break
        health = httpx.get(server + "/health", timeout=30).json()
    assert health["status"] == "ok" and health["running"] == 0 and health["waiting"] == 0
    assert health["free_slots"] == health["slots"]
    final = httpx.post(server + "/v1/chat/completions", json=ordinary, timeout=60,
                       headers={"Authorization": f"Bearer {KEY}"})
    assert final.status_code == 200
