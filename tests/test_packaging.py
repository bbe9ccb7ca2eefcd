"""Configs travel with the package (issue #24): the built wheel, installed into a scratch venv (not this checkout),
runs stage 10 with its default config from an empty directory, lists its shipped configs and prints one.

The scratch venv sees this environment's dependencies through a ``.pth`` line (torch and friends are not installed
twice) but not this checkout's editable install, so ``lumi`` is the wheel's own copy."""

from __future__ import annotations

import os
import site
import subprocess
import sys
import venv
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A scratch venv's python with the freshly built wheel installed."""
    root = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(root / "dist"), str(REPO_ROOT)], check=True, cwd=root)
    wheel = next((root / "dist").glob("lumi_lab-*.whl"))
    venv.create(root / "venv", with_pip=False)
    python = root / "venv" / "bin" / "python"
    target = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                 check=True, capture_output=True, text=True).stdout.strip())
    (target / "dependencies.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
                   check=True)
    return python


def lumi(python: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": ""}
    return subprocess.run([str(python), "-m", "lumi", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=600)


def test_the_wheel_runs_stage_10_from_an_empty_directory(installed, tmp_path):
    where = lumi(installed, tmp_path, "config", "list")
    assert where.returncode == 0 and "demo/corpus.json" in where.stdout.split(), where.stderr
    origin = subprocess.run([str(installed), "-c", "import lumi; print(lumi.__file__)"], cwd=tmp_path,
                            capture_output=True, text=True, check=True).stdout
    assert str(REPO_ROOT) not in origin, origin  # the wheel's copy, not this checkout
    result = lumi(installed, tmp_path, "corpus", "--config", "demo/corpus.json", "--output-dir", "corpus",
                  "--set", "sources.0.documents=200")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "corpus" / "manifest.json").is_file()
    shown = lumi(installed, tmp_path, "config", "show", "config/demo/corpus.json")
    assert shown.returncode == 0 and '"sources"' in shown.stdout
