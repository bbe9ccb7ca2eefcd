"""The HTTP API through the real ``openai`` client (and raw HTTP for what a client library hides) against uvicorn on
127.0.0.1: chat and completions, plain and streamed, usage, errors, limits, and cancellation on disconnect."""

from __future__ import annotations

import asyncio
import http.client
import json
import socket
import time
import urllib.parse

import openai
import pytest
from serve_helpers import serving

from lumi.serve.api import ServerSettings, create_app
from lumi.serve.checkpoint import load_for_serving
from lumi.generation.engine import Engine
from lumi.serve.prompts import chat_ids, completion_ids
from lumi.generation.sampling import SamplingParams
from lumi.serve.server import listening_socket, running_server

KEY = "test-key-123"
MODEL = "tiny-chat"
QUESTION = [{"role": "user", "content": "Where does the baker live?"}]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    # a long context, so a request can run long enough to be cancelled mid-way
    with serving(tmp_path_factory.mktemp("api"), ServerSettings(model_id=MODEL, api_key=KEY, max_body_bytes=64 << 10),
                 max_seq_len=1024, max_batch=4) as served:
        yield served


@pytest.fixture
def client(server):
    return openai.OpenAI(base_url=server["url"] + "/v1", api_key=KEY, max_retries=0, timeout=60)


def raw(server, method: str, path: str, body: bytes | None = None, key: str | None = KEY):
    """(status, parsed JSON) of one plain HTTP request."""
    address = urllib.parse.urlparse(server["url"])
    connection = http.client.HTTPConnection(address.hostname, address.port, timeout=30)
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {key}"} if key else {})}
    connection.request(method, path, body=body, headers=headers)
    response = connection.getresponse()
    status, data = response.status, response.read()
    connection.close()
    return status, json.loads(data)


def test_chat_plain_and_streamed_equal_the_engine(server, client):
    engine, tokenizer = server["engine"], server["tokenizer"]
    expected = engine.generate(chat_ids(tokenizer, QUESTION), SamplingParams(temperature=0, max_tokens=30))
    reply = client.chat.completions.create(model=MODEL, messages=QUESTION, temperature=0, max_tokens=30)
    assert reply.object == "chat.completion"
    assert reply.choices[0].message.role == "assistant"
    assert reply.choices[0].message.content == expected.text
    assert reply.choices[0].finish_reason == expected.finish_reason
    assert reply.usage.prompt_tokens == len(chat_ids(tokenizer, QUESTION))
    assert reply.usage.completion_tokens == expected.completion_tokens
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens

    chunks = list(client.chat.completions.create(model=MODEL, messages=QUESTION, temperature=0, max_tokens=30,
                                                 stream=True, stream_options={"include_usage": True}))
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == expected.text
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == [expected.finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == expected.completion_tokens

    parts = [{"role": "user", "content": [{"type": "text", "text": "Where does the baker "},
                                           {"type": "text", "text": "live?"}]}]
    reply = client.chat.completions.create(model=MODEL, messages=parts, temperature=0, max_tokens=30)
    assert reply.choices[0].message.content == expected.text  # content parts are joined into the same prompt


def test_completions_plain_and_streamed(server, client):
    engine, tokenizer = server["engine"], server["tokenizer"]
    prompt = "The baker lives in"
    expected = engine.generate(completion_ids(tokenizer, prompt), SamplingParams(temperature=1.0, seed=5,
                                                                               max_tokens=8))
    reply = client.completions.create(model=MODEL, prompt=prompt, max_tokens=8, seed=5)
    assert reply.object == "text_completion"
    assert reply.choices[0].text == expected.text
    assert reply.choices[0].finish_reason == "length" and reply.usage.completion_tokens == 8
    stream = client.completions.create(model=MODEL, prompt=prompt, max_tokens=8, seed=5, stream=True)
    chunks = list(stream)
    assert "".join(c.choices[0].text for c in chunks) == expected.text
    assert chunks[-1].choices[0].finish_reason == "length"
    assert all(c.usage is None for c in chunks)  # no usage chunk unless asked for

    stop = expected.text[3:7]
    assert len(stop.strip()) > 1
    stopped = client.completions.create(model=MODEL, prompt=prompt, max_tokens=8, seed=5, stop=[stop])
    assert stopped.choices[0].text == expected.text[:expected.text.index(stop)]
    assert stopped.choices[0].finish_reason == "stop"


def test_stream_is_server_sent_events_ending_with_done(server):
    address = urllib.parse.urlparse(server["url"])
    connection = http.client.HTTPConnection(address.hostname, address.port, timeout=30)
    body = {"model": MODEL, "prompt": "Once upon a time", "max_tokens": 40, "seed": 1, "stream": True}
    connection.request("POST", "/v1/completions", json.dumps(body),
                       {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"})
    lines = [line for line in connection.getresponse().read().decode().split("\n\n") if line]
    assert lines[-1] == "data: [DONE]"
    assert all(line.startswith("data: ") for line in lines)
    connection.close()


def test_models_and_health(server, client):
    assert [m.id for m in client.models.list().data] == [MODEL]
    status, health = raw(server, "GET", "/health", key=None)
    assert status == 200 and health["status"] == "ok" and health["model"] == MODEL


def test_errors_are_openai_error_json(server, client):
    status, body = raw(server, "POST", "/v1/chat/completions", b"{not json")
    assert status == 400 and body["error"]["type"] == "invalid_request_error"
    status, body = raw(server, "POST", "/v1/chat/completions",
                       json.dumps({"model": MODEL, "messages": QUESTION, "temperature": "hot"}).encode())
    assert status == 400 and body["error"]["param"] == "temperature"
    status, body = raw(server, "POST", "/v1/completions", json.dumps({"model": MODEL, "prompt": "x"}).encode(),
                       key=None)
    assert status == 401 and body["error"]["type"] == "authentication_error"
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=server["url"] + "/v1", api_key="wrong", max_retries=0).models.list()
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="gpt-4", messages=QUESTION)
    with pytest.raises(openai.BadRequestError, match="context"):
        client.completions.create(model=MODEL, prompt="word " * 2000)
    with pytest.raises(openai.BadRequestError, match="max_tokens"):
        client.completions.create(model=MODEL, prompt="hello", max_tokens=5000)
    status, body = raw(server, "POST", "/v1/completions", b"x" * (65 << 10))
    assert status == 413 and "body" in body["error"]["message"]


def test_full_queue_answers_503(server, tmp_path):
    engine, tokenizer = server["engine"], server["tokenizer"]
    idle = Engine(engine.model, tokenizer, max_batch=1, max_waiting=0)  # never started: its one slot stays taken
    idle.submit([1, 2, 3], SamplingParams())
    app = create_app(idle, tokenizer, ServerSettings(model_id=MODEL))
    with running_server(app) as url:
        client = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0)
        with pytest.raises(openai.InternalServerError) as caught:
            client.completions.create(model=MODEL, prompt="hello")
    assert caught.value.status_code == 503


def wait_until_idle(server, timeout_s: float = 20.0) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        _, health = raw(server, "GET", "/health", key=None)
        if health["running"] == 0 and health["waiting"] == 0:
            return health
        time.sleep(0.05)
    raise AssertionError(f"engine still busy: {health}")


@pytest.mark.parametrize("stream", [True, False])
def test_client_disconnect_cancels_generation(server, stream):
    before = wait_until_idle(server)["cancelled"]
    finished_before = sum(n for k, n in server["engine"].stats.items() if k.startswith("finished_"))
    address = urllib.parse.urlparse(server["url"])
    body = json.dumps({"model": MODEL, "prompt": "The", "max_tokens": 1000, "temperature": 0,
                       "stream": stream}).encode()
    sock = socket.create_connection((address.hostname, address.port))
    sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 + f"Authorization: Bearer {KEY}\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)
    if stream:
        received = b""
        while b"data: " not in received:  # the stream has started
            received += sock.recv(4096)
    else:
        time.sleep(0.3)
    sock.close()
    after = wait_until_idle(server)
    assert after["cancelled"] == before + 1
    finished_after = sum(n for k, n in server["engine"].stats.items() if k.startswith("finished_"))
    assert finished_after == finished_before  # it did not run on to its end


def test_cors_is_off_unless_origins_are_configured(server):
    preflight = {"Origin": "http://example.test", "Access-Control-Request-Method": "POST"}

    def allowed_origin(url: str) -> str | None:
        address = urllib.parse.urlparse(url)
        connection = http.client.HTTPConnection(address.hostname, address.port, timeout=30)
        connection.request("OPTIONS", "/v1/completions", headers=preflight)
        response = connection.getresponse()
        response.read()
        connection.close()
        return response.getheader("access-control-allow-origin")

    assert allowed_origin(server["url"]) is None
    app = create_app(server["engine"], server["tokenizer"],
                     ServerSettings(model_id=MODEL, cors_origins=["http://example.test"]))
    with running_server(app) as url:
        assert allowed_origin(url) == "http://example.test"


def test_serve_flags_key_from_environment_and_loopback_default(monkeypatch, tmp_path):
    from lumi.cli import parse_args
    from lumi.serve.settings import settings_from_args

    args = parse_args(["serve", "--model-path", str(tmp_path)])
    assert args.host == "127.0.0.1"
    monkeypatch.setenv("LUMI_API_KEY", "from-env")
    assert settings_from_args(args).api_key == "from-env"
    monkeypatch.delenv("LUMI_API_KEY")
    assert settings_from_args(parse_args(["serve", "--model-path", str(tmp_path)])).api_key is None


def test_lumi_serve_socket_turns_nagle_off():
    """``lumi serve`` hands uvicorn its own listening socket: what asyncio accepts on it must have TCP_NODELAY (asyncio
    sets it only where the socket's proto says TCP), else every keep-alive response waits ~40 ms for a delayed ACK."""
    async def accepted_nodelay() -> int:
        seen = asyncio.get_running_loop().create_future()

        async def handle(_reader, writer):
            seen.set_result(writer.get_extra_info("socket").getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
            writer.close()

        sock = listening_socket("127.0.0.1", 0)
        async with await asyncio.start_server(handle, sock=sock):
            _, writer = await asyncio.open_connection(*sock.getsockname())
            value = await asyncio.wait_for(seen, 10)
            writer.close()
        return value

    assert asyncio.run(accepted_nodelay())


def test_chat_with_a_base_model_says_to_use_completions(server):
    base_model, base_tokenizer = load_for_serving(server["dirs"]["base"], device="cpu")
    app = create_app(Engine(base_model, base_tokenizer), base_tokenizer, ServerSettings(model_id=MODEL))
    with running_server(app) as url:
        client = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0)
        with pytest.raises(openai.BadRequestError, match="no chat template"):
            client.chat.completions.create(model=MODEL, messages=QUESTION)
