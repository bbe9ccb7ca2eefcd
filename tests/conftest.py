"""Shared test setup: offline hub, a project-local compile cache, and the real data samples in ../shared."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
REPO_ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(REPO_ROOT / ".cache" / "torchinductor"))

SAMPLES_DIR = Path(os.environ.get("LUMI_SAMPLES_DIR", REPO_ROOT.parent / "shared" / "data" / "samples"))
FIXTURES_DIR = Path(__file__).resolve().parent / "fixtures"


@pytest.fixture(scope="session")
def samples_dir() -> Path:
    """The real data samples; skipped with a reason when absent, a failure under CI=true."""
    if not SAMPLES_DIR.is_dir():
        message = f"real data samples not found at {SAMPLES_DIR}"
        if os.environ.get("CI") == "true":
            pytest.fail(message + " (required when CI=true)")
        pytest.skip(message)
    return SAMPLES_DIR


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    return FIXTURES_DIR
