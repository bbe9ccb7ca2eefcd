"""The CI entry point (`.ci/run`) runs the quick start's two commands on the same clone and fails if either fails;
`make test` passes pytest's failures through, "no tests collected" (exit 5) included.

`.ci/run` is run with a stand-in `make` first on PATH (it records the targets and exits as told), because running
the real suite and demo from inside the suite would recurse; the Makefile itself is run with real make."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import REPO_ROOT

FAKE_MAKE = """#!/usr/bin/env bash
echo "$1" >> "$MAKE_LOG"
var="EXIT_$1"
exit "${!var:-0}"
"""


def run_ci(tmp_path: Path, **exits: int) -> tuple[int, list[str], str]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "make").write_text(FAKE_MAKE)
    (bin_dir / "make").chmod(0o755)
    log = tmp_path / "make.log"
    log.unlink(missing_ok=True)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "MAKE_LOG": str(log),
           **{f"EXIT_{target}": str(code) for target, code in exits.items()}}
    result = subprocess.run(["bash", str(REPO_ROOT / ".ci" / "run")], env=env, capture_output=True, text=True)
    return result.returncode, log.read_text().split(), result.stderr


def test_ci_runs_the_tests_then_the_demo(tmp_path):
    code, targets, _ = run_ci(tmp_path)
    assert (code, targets) == (0, ["test", "demo"])


@pytest.mark.parametrize("exits, failing", [({"test": 2}, "make test"), ({"demo": 2}, "make demo"),
                                            ({"test": 2, "demo": 2}, "make demo")])
def test_ci_fails_when_either_fails(tmp_path, exits, failing):
    code, targets, stderr = run_ci(tmp_path, **exits)
    assert code != 0 and targets == ["test", "demo"]  # the demo runs even after failing tests: both are reported
    assert failing in stderr


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
@pytest.mark.parametrize("pytest_exit", [0, 1, 5])
def test_make_test_passes_pytest_failures_through(tmp_path, pytest_exit):
    fake_python = tmp_path / "python"
    fake_python.write_text(f"#!/bin/sh\nexit {pytest_exit}\n")
    fake_python.chmod(0o755)
    stamp = tmp_path / "installed"
    stamp.touch()  # newer than pyproject.toml: make does not reinstall
    result = subprocess.run(["make", "-s", "test", f"PY={fake_python}", f"STAMP={stamp}"], cwd=REPO_ROOT,
                            capture_output=True, text=True)
    assert (result.returncode == 0) == (pytest_exit == 0), result.stderr
