"""``lumi serve`` (stage 100, API): the OpenAI-compatible API and the web chat page on uvicorn (lumi/serve/api.py)."""

from __future__ import annotations

import argparse
import logging
import os

import uvicorn

from lumi.core.errors import LumiError
from lumi.serve.api import DEFAULT_MAX_BODY_BYTES, ServerSettings, create_app
from lumi.serve.options import add_model_arguments, engine_from_args

log = logging.getLogger(__name__)
API_KEY_VARIABLE = "LUMI_API_KEY"
LOOPBACK = ("127.0.0.1", "localhost", "::1")


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
        if args.host not in LOOPBACK and settings.api_key is None:
            log.warning("serving on %s without an API key: anyone who can reach it can use it", args.host)
        print(f"serving {settings.model_id} on http://{args.host}:{args.port}/ (web chat), "
              f"API at http://{args.host}:{args.port}/v1", flush=True)
        uvicorn.run(app, host=args.host, port=args.port, log_level="info")
    return 0


