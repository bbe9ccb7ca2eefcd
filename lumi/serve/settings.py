"""What ``lumi serve``'s access flags mean: the model id clients name, the API key (a file or $LUMI_API_KEY, never
the command line), the loopback default, the port range -- as the ``ServerSettings`` of ``lumi/serve/api.py``."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from lumi.core.errors import LumiError
from lumi.serve.api import ServerSettings

API_KEY_VARIABLE = "LUMI_API_KEY"
LOOPBACK = ("127.0.0.1", "localhost", "::1")


def default_model_name(model_path: Path) -> str:
    """``parent/name`` of the model dir: every run's checkpoint is called ``final``, its run dir tells them apart."""
    resolved = model_path.resolve()
    return f"{resolved.parent.name}/{resolved.name}" if resolved.parent.name else resolved.name


def api_key_from(args: argparse.Namespace) -> str | None:
    if args.api_key is not None:
        raise LumiError(f"--api-key puts the key where every user of this machine sees it (ps): set "
                        f"${API_KEY_VARIABLE} or pass --api-key-file FILE")
    if args.api_key_file is not None:
        try:
            lines = args.api_key_file.read_text(encoding="utf-8").splitlines()
        except OSError as exc:
            raise LumiError(f"--api-key-file {args.api_key_file}: {exc.strerror}") from None
        if not lines or not lines[0].strip():
            raise LumiError(f"--api-key-file {args.api_key_file}: the first line (the key) is empty")
        return lines[0].strip()
    return os.environ.get(API_KEY_VARIABLE) or None


def settings_from_args(args: argparse.Namespace) -> ServerSettings:
    if not 0 <= args.port <= 65535:
        raise LumiError(f"--port must be in 0..65535 (0 = any free port), got {args.port}")
    if args.max_body_bytes < 1024:
        raise LumiError(f"--max-body-bytes must be >= 1024, got {args.max_body_bytes}")
    if not 0 <= args.stream_interval_ms <= 1000:
        raise LumiError(f"--stream-interval-ms must be in 0..1000, got {args.stream_interval_ms}")
    api_key = api_key_from(args)
    if args.host not in LOOPBACK and api_key is None and not args.insecure_no_api_key:
        raise LumiError(f"--host {args.host} exposes the server beyond this machine without an API key: set ${API_KEY_VARIABLE} or "
                        "--api-key-file (or, knowingly, --insecure-no-api-key)")
    return ServerSettings(model_id=args.served_model_name or default_model_name(args.model_path), api_key=api_key,
                          cors_origins=args.cors_origin, max_body_bytes=args.max_body_bytes,
                          stream_interval_s=args.stream_interval_ms / 1000)
