"""Running the API server for a while: ``running_server`` (uvicorn in a thread of this process: tests) and
``server_process`` (``lumi serve`` as a child process: the demo's one question, the benchmark)."""

from __future__ import annotations

import contextlib
import json
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

from lumi.core.errors import LumiError


def listening_socket(host: str, port: int) -> socket.socket:
    """A bound, listening TCP socket for uvicorn (``Server.run(sockets=...)``): a taken or invalid address is one
    LumiError line here instead of uvicorn's exit 3, and the port is known (``--port 0``) before serving starts."""
    try:
        family, kind, protocol = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][:3]
        # The protocol named (IPPROTO_TCP, not 0): asyncio sets TCP_NODELAY only on sockets whose proto says TCP, and
        # without it Nagle's algorithm holds each response's body behind its headers for a delayed ACK (40 ms).
        sock = socket.socket(family, kind, protocol)
    except (OSError, OverflowError) as exc:
        raise LumiError(f"cannot listen on {host}:{port}: {getattr(exc, 'strerror', None) or exc}") from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(2048)
    except (OSError, OverflowError) as exc:
        sock.close()
        raise LumiError(f"cannot listen on {host}:{port}: {getattr(exc, 'strerror', None) or exc}") from None
    sock.set_inheritable(True)
    return sock


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
                   timeout_s: float = 180.0) -> Iterator[tuple[str, dict, subprocess.Popen]]:
    """``lumi serve`` as a child process on a free loopback port; yields ``(base URL, its /health, the process)`` once
    it answers, and stops it (SIGINT: uvicorn's graceful shutdown) afterwards. Its output goes to ``log`` (default:
    ours)."""
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
        yield url, health, process
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
