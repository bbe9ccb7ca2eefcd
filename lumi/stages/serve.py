"""``lumi serve`` (stage 100, API): the OpenAI-compatible API and the web chat page on uvicorn (lumi/serve/api.py)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import uvicorn

from lumi.serve.api import DEFAULT_MAX_BODY_BYTES, DEFAULT_STREAM_INTERVAL_S, create_app
from lumi.serve.engine_process import EngineProcess
from lumi.serve.options import add_model_arguments
from lumi.serve.server import listening_socket
from lumi.serve.settings import API_KEY_VARIABLE, LOOPBACK, settings_from_args

log = logging.getLogger(__name__)


def configure_parser(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser)
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to bind (default 127.0.0.1: this machine only; 0.0.0.0 exposes it and then "
                             "needs an API key)")
    parser.add_argument("--port", type=int, default=8000, help="TCP port (default 8000; 0 = any free port)")
    parser.add_argument("--api-key-file", type=Path,
                        help=f"file whose first line is the key clients must send as 'Authorization: Bearer KEY' "
                             f"(default: ${API_KEY_VARIABLE}; never on the command line, where ps shows it)")
    parser.add_argument("--api-key", help=argparse.SUPPRESS)  # refused with a pointer to the two safe ways
    parser.add_argument("--insecure-no-api-key", action="store_true",
                        help="allow a non-loopback --host without an API key (anyone who reaches it can use it)")
    parser.add_argument("--served-model-name", "--model-name", dest="served_model_name",
                        help="the model id clients name (default: the model dir's parent/name, e.g. sft/final)")
    parser.add_argument("--cors-origin", action="append", default=[], metavar="ORIGIN",
                        help="allow browser requests from ORIGIN (repeatable; default: CORS off)")
    parser.add_argument("--max-body-bytes", type=int, default=DEFAULT_MAX_BODY_BYTES,
                        help=f"largest request body (default {DEFAULT_MAX_BODY_BYTES})")
    parser.add_argument("--stream-interval-ms", type=float, default=DEFAULT_STREAM_INTERVAL_S * 1000,
                        help="a stream sends the tokens made within this many ms in one chunk (default "
                             f"{DEFAULT_STREAM_INTERVAL_S * 1000:g}: a token a chunk, as OpenAI streams; a few ms "
                             "saves the server and its clients work per token when many clients stream a fast model)")


def run(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    sock = listening_socket(args.host, args.port)  # before loading the model: a taken port fails at once
    with sock, EngineProcess(args) as engine:  # the model loads and runs in a process of its own
        app = create_app(engine, engine.tokenizer, settings)
        if settings.api_key is None and args.host not in LOOPBACK:
            log.warning("serving on %s without an API key: anyone who can reach it can use it", args.host)
        host = f"[{args.host}]" if ":" in args.host else args.host
        base = f"http://{host}:{sock.getsockname()[1]}"
        print(f"serving {settings.model_id} on {base}/ (web chat), API at {base}/v1", flush=True)
        uvicorn.Server(uvicorn.Config(app, log_level="info")).run(sockets=[sock])
    return 0
