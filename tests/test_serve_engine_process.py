"""``lumi serve``'s engine in its own process (``EngineProcess``) behind the real API and the real ``openai`` client:
the same answers and log-probs as the engine in-process, cancellation on disconnect, the engine's queue bound,
and a dead engine process that fails its requests and shows on /health instead of hanging them."""

from __future__ import annotations

import json
import os
import signal
import socket
import time
import urllib.parse

import httpx2 as httpx  # openai 3.x brings httpx2 (the httpx API)
import openai
import pytest
from serve_helpers import serving

from lumi.cli import parse_args
from lumi.core.errors import LumiError
from lumi.generation.engine import Engine
from lumi.generation.sampling import SamplingParams
from lumi.serve.api import ServerSettings
from lumi.serve.engine_process import EngineProcess
from lumi.serve.prompts import chat_ids, completion_ids

MODEL = "tiny-chat"
QUESTION = [{"role": "user", "content": "Where does the baker live?"}]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with serving(tmp_path_factory.mktemp("process"), ServerSettings(model_id=MODEL), max_seq_len=1024,
                 in_process=False, max_batch=2, max_waiting=1) as served:
        yield served


@pytest.fixture(scope="module")
def reference(server):
    """The same checkpoint in an engine of this process: what the process engine must answer."""
    with Engine(server["model"], server["tokenizer"]) as engine:
        yield engine


@pytest.fixture
def client(server):
    return openai.OpenAI(base_url=server["url"] + "/v1", api_key="none", max_retries=0, timeout=60)


def health(server) -> httpx.Response:
    return httpx.get(server["url"] + "/health", timeout=20)


def wait_until_idle(server, timeout_s: float = 20.0) -> dict:
    deadline = time.monotonic() + timeout_s
    while (state := health(server).json())["running"] or state["waiting"]:
        assert time.monotonic() < deadline, f"engine still busy: {state}"
        time.sleep(0.05)
    return state


def test_the_engine_runs_in_another_process(server):
    assert isinstance(server["engine"], EngineProcess)
    assert server["engine"]._process.pid != os.getpid() and server["engine"]._process.is_alive()


def test_answers_and_logprobs_equal_the_in_process_engine(server, reference, client):
    tokenizer = server["tokenizer"]
    expected = reference.generate(chat_ids(tokenizer, QUESTION), SamplingParams(temperature=0, max_tokens=40))
    reply = client.chat.completions.create(model=MODEL, messages=QUESTION, temperature=0, max_tokens=40)
    assert reply.choices[0].message.content == expected.text
    assert reply.usage.completion_tokens == expected.completion_tokens
    streamed = client.chat.completions.create(model=MODEL, messages=QUESTION, temperature=0, max_tokens=40,
                                              stream=True)
    assert "".join(chunk.choices[0].delta.content or "" for chunk in streamed if chunk.choices) == expected.text

    prompt_ids = completion_ids(tokenizer, "The baker")
    outputs = list(reference.submit(prompt_ids, SamplingParams(temperature=0, max_tokens=8), logprobs=2))
    local = [entry.logprob for output in outputs for entry in output.logprobs]
    remote = client.completions.create(model=MODEL, prompt="The baker", temperature=0, max_tokens=8, logprobs=2)
    assert remote.choices[0].text == "".join(output.text for output in outputs)
    assert remote.choices[0].logprobs.token_logprobs == pytest.approx(local, abs=1e-5)
    sampled = [client.completions.create(model=MODEL, prompt="The baker", max_tokens=12, temperature=1.0, seed=7, n=2)
               for _ in range(2)]
    assert [c.text for c in sampled[0].choices] == [c.text for c in sampled[1].choices]  # seeded in the child too


def test_client_disconnect_cancels_in_the_engine_process(server):
    before = wait_until_idle(server)["cancelled"]
    address = urllib.parse.urlparse(server["url"])
    body = json.dumps({"model": MODEL, "prompt": "The", "max_tokens": 1000, "temperature": 0,
                       "stream": True}).encode()
    with socket.create_connection((address.hostname, address.port)) as sock:
        sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        received = b""
        while b"data: " not in received:  # the stream has started
            received += sock.recv(4096)
    assert wait_until_idle(server)["cancelled"] == before + 1


def test_the_queue_bound_is_the_engines(server, client):
    """max_batch 2 + max_waiting 1: a fourth request while three run is refused at once with 503."""
    wait_until_idle(server)
    engine, prompt = server["engine"], completion_ids(server["tokenizer"], "The")
    held = [engine.submit(prompt, SamplingParams(temperature=0, max_tokens=900), lambda output: None)
            for _ in range(3)]
    try:
        with pytest.raises(openai.InternalServerError) as caught:
            client.completions.create(model=MODEL, prompt="hello", max_tokens=2)
        assert caught.value.status_code == 503 and "busy" in caught.value.message
    finally:
        for request in held:
            request.cancel()
    wait_until_idle(server)
    assert client.completions.create(model=MODEL, prompt="hello", max_tokens=2).choices[0].finish_reason


def test_a_dead_engine_process_fails_its_requests_and_shows_on_health(tmp_path):
    with serving(tmp_path, ServerSettings(model_id=MODEL), max_seq_len=1024, in_process=False) as served:
        client = openai.OpenAI(base_url=served["url"] + "/v1", api_key="none", max_retries=0, timeout=30)
        assert health(served).status_code == 200
        stream = client.completions.create(model=MODEL, prompt="The", max_tokens=1000, temperature=0, stream=True)
        next(iter(stream))  # generating
        os.kill(served["engine"]._process.pid, signal.SIGKILL)
        started = time.monotonic()
        with pytest.raises(openai.APIError):  # the stream ends with the engine's error instead of hanging
            for _ in stream:
                pass
        assert time.monotonic() - started < 20
        response = health(served)
        assert response.status_code == 503 and "engine process has stopped" in response.json()["error"]
        with pytest.raises(openai.InternalServerError) as caught:
            client.completions.create(model=MODEL, prompt="hello", max_tokens=2)
        assert caught.value.status_code == 503 and "not available" in caught.value.message


def test_a_model_that_cannot_load_is_one_line_error(tmp_path):
    missing = tmp_path / "no-such-model"
    with pytest.raises(LumiError) as caught:
        EngineProcess(parse_args(["serve", "--model-path", str(missing), "--device", "cpu"])).start()
    assert str(missing) in str(caught.value) and "\n" not in str(caught.value)
