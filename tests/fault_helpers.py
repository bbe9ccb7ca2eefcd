"""Fault injection for tests: a nearly full or a read-only file system (a real tmpfs), damaged bytes, a dead pid.

The file-system faults use a real kernel file system, so every writer (numpy, pyarrow, torch, safetensors,
sentencepiece) meets the fault as it would on a user's disk: a small tmpfs, mounted when the tests run as root;
elsewhere those cases skip, saying why. Faults any user can cause (a path under a regular file) need no mount.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest

# ``python -c`` code for the kill/resume tests of every trainer: the CLI (argv as given) SIGKILLs itself at the start
# of optimizer step $KILL_AT, as a real kill would land, with no chance to clean up.
KILL_AT_STEP = """
import os, signal, sys
from lumi.train import trainer
original = trainer.Trainer.train_step
def train_step(self, batches):
    if self.step == int(os.environ["KILL_AT"]):
        os.kill(os.getpid(), signal.SIGKILL)
    return original(self, batches)
trainer.Trainer.train_step = train_step
from lumi.cli import main
sys.exit(main(sys.argv[1:]))
"""

def _mount_tmpfs(mount_point: Path, options: str) -> None:
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a small tmpfs needs root (the disk-full and read-only cases run as root only)")
    mount_point.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(mount_point)],
                            capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip()}")


@contextlib.contextmanager
def nearly_full_filesystem(mount_point: Path, free_bytes: int = 16 << 10, size: str = "2m") -> Iterator[Path]:
    """A tmpfs at ``mount_point`` filled by a ballast file until only about ``free_bytes`` are left."""
    _mount_tmpfs(mount_point, f"size={size}")
    try:
        ballast = mount_point / "ballast"
        with open(ballast, "wb", buffering=0) as handle, contextlib.suppress(OSError):
            while True:
                handle.write(b"\0" * 4096)
        os.truncate(ballast, max(0, ballast.stat().st_size - free_bytes))
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


@contextlib.contextmanager
def read_only_filesystem(mount_point: Path) -> Iterator[Path]:
    _mount_tmpfs(mount_point, "ro,size=1m")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def flip_byte(path: Path, offset: int | None = None) -> None:
    """Invert one byte (the middle one by default): same size, different content."""
    data = bytearray(path.read_bytes())
    data[len(data) // 2 if offset is None else offset] ^= 0xFF
    path.write_bytes(bytes(data))


def truncate(path: Path, keep: float = 0.5) -> None:
    os.truncate(path, int(path.stat().st_size * keep))


def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def one_error_line(stderr: str) -> str:
    """The single line a failed stage must end with: ``error: ...`` and no traceback before it."""
    lines = [line for line in stderr.strip().splitlines() if line.strip()]
    assert lines, "nothing on stderr"
    assert "Traceback" not in stderr, stderr
    assert lines[-1].startswith("error: "), stderr
    return lines[-1]
