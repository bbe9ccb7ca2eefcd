"""``lumi serve``: the OpenAI-compatible API and the web page on uvicorn, and ``running_server`` to run the same
server in-process for a while (tests, the demo's one question, benchmarks)."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import IO, Iterator

import uvicorn

from lumi.errors import LumiError
from lumi.serve.api import DEFAULT_MAX_BODY_BYTES, ServerSettings, create_app
from lumi.serve.options import add_model_arguments, engine_from_args

log = logging.getLogger(__name__)
API_KEY_VARIABLE = "LUMI_API_KEY"


def configure_parser(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser)
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to bind (default 127.0.0.1: this machine only; 0.0.0.0 exposes it)")
    parser.add_argument("--port", type=int, default=8000, help="TCP port (default 8000; 0 = any free port)")
    parser.add_argument("--api-key", help=f"require 'Authorization: Bearer KEY' (default: ${API_KEY_VARIABLE})")
    parser.add_argument("--model-name", help="the model id clients name (default: the model dir's name)")
    parser.add_argument("--cors-origin", action="append", default=[], metavar="ORIGIN",
                        help="allow browser requests from ORIGIN (repeatable; default: CORS off)")
    parser.add_argument("--max-body-bytes", type=int, default=DEFAULT_MAX_BODY_BYTES,
                        help=f"largest request body (default {DEFAULT_MAX_BODY_BYTES})")


def settings_from_args(args: argparse.Namespace) -> ServerSettings:
    api_key = args.api_key or os.environ.get(API_KEY_VARIABLE) or None
    if args.max_body_bytes < 1024:
        raise LumiError(f"--max-body-bytes must be >= 1024, got {args.max_body_bytes}")
    return ServerSettings(model_id=args.model_name or args.model_path.resolve().name, api_key=api_key,
                          cors_origins=args.cors_origin, max_body_bytes=args.max_body_bytes)


def run(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    with engine_from_args(args) as engine:
        app = create_app(engine, engine.tokenizer, settings)
        if args.host not in ("127.0.0.1", "localhost", "::1") and settings.api_key is None:
            log.warning("serving on %s without an API key: anyone who can reach it can use it", args.host)
        print(f"serving {settings.model_id} on http://{args.host}:{args.port}/ (web chat), "
              f"API at http://{args.host}:{args.port}/v1", flush=True)
        uvicorn.run(app, host=args.host, port=args.port, log_level="info")
    return 0


@contextlib.contextmanager
def running_server(app, host: str = "127.0.0.1", port: int = 0, timeout_s: float = 30.0) -> Iterator[str]:
    """Run ``app`` on uvicorn in a background thread; yields its base URL (``http://host:port``)."""
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, name="lumi-uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout_s
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise LumiError(f"the API server did not start on {host}:{port}")
        time.sleep(0.05)
    bound = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://{host}:{bound}"
    finally:
        server.should_exit = True
        thread.join(timeout_s)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def server_process(model_dir: str | Path, extra_args: list[str] = (), log: IO | None = None,
                   timeout_s: float = 180.0) -> Iterator[tuple[str, dict]]:
    """``lumi serve`` as a child process on a free loopback port; yields ``(base URL, its /health)`` once it answers,
    and stops it (SIGINT: uvicorn's graceful shutdown) afterwards. Its output goes to ``log`` (default: ours)."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    process = subprocess.Popen([sys.executable, "-m", "lumi", "serve", "--model-path", str(model_dir), "--port",
                                str(port), *extra_args], stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            if process.poll() is not None or time.monotonic() > deadline:
                raise LumiError(f"lumi serve on {model_dir} did not come up (exit status {process.poll()})")
            try:
                with urllib.request.urlopen(url + "/health", timeout=2) as response:
                    health = json.load(response)
                break
            except OSError:
                time.sleep(0.3)
        yield url, health
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
