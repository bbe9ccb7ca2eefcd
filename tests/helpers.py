"""Reusable test helpers: small corpus directories and real sample documents.

Import from tests as ``from helpers import make_corpus_dir`` (pytest puts ``tests/`` on ``sys.path``).
"""

from __future__ import annotations

import gzip
import hashlib
import json
from collections import Counter
from pathlib import Path
from typing import Iterable

from lumi.core.files import atomic_write_json
from lumi.formats.corpus import CORPUS_FORMAT, MANIFEST, ShardWriter


def make_corpus_dir(path: Path, texts: Iterable[str], source: str = "test",
                    shard_bytes: int = 64 << 20) -> Path:
    """Write ``texts`` as a valid ``lumi-corpus/1`` directory (parquet shards + manifest) at ``path``."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    writer = ShardWriter(path, shard_bytes=shard_bytes)
    counts: Counter[str] = Counter()
    for index, text in enumerate(texts):
        writer.add(text, source, f"{source}-{index}")
        counts["documents"] += 1
        counts["bytes"] += len(text.encode("utf-8"))
    shards = writer.close()
    config = {"source": source, "written_by": "tests/helpers.py"}
    atomic_write_json(path / MANIFEST, {
        "format": CORPUS_FORMAT,
        "documents": counts["documents"],
        "bytes": counts["bytes"],
        "shards": shards,
        "sources": {source: dict(counts)},
        "config": config,
        "config_sha256": hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest(),
    })
    return path


def _paragraphs(text: str) -> list[str]:
    return [p for p in text.split("\n\n") if p.strip()]


def _jsonl_texts(path: Path) -> list[str]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as handle:
        return [json.loads(line)["text"] for line in handle if line.strip()]


def load_sample_documents(samples_dir: Path, max_bytes_per_source: int = 300_000) -> dict[str, list[str]]:
    """Real pretraining-style documents from the data samples, per source, each source cut to about
    ``max_bytes_per_source`` bytes: tinyshakespeare and Gutenberg (paragraphs), Wikipedia (articles), C4, Dolma."""
    sources = {
        "tinyshakespeare": _paragraphs((samples_dir / "tinyshakespeare_train90.txt").read_text(encoding="utf-8")),
        "gutenberg": [p for name in ("gutenberg_pg11.txt", "gutenberg_pg84.txt")
                      for p in _paragraphs((samples_dir / name).read_text(encoding="utf-8"))],
        "wiki": [line for line in (samples_dir / "wiki_demo_llamafactory_first15.txt").read_text(encoding="utf-8")
                 .splitlines() if line.strip()],
        "c4": [text for name in ("c4_demo_llamafactory_first150.jsonl", "c4_olmo_fixture_01.json.gz",
                                 "c4_olmo_fixture_02.json.gz") for text in _jsonl_texts(samples_dir / name)],
        "dolma": _jsonl_texts(samples_dir / "dolma_cc_en_head-0091.jsonl"),
    }
    cut: dict[str, list[str]] = {}
    for source, docs in sources.items():
        kept, size = [], 0
        for doc in docs:
            if size >= max_bytes_per_source:
                break
            kept.append(doc)
            size += len(doc.encode("utf-8"))
        cut[source] = kept
    return cut
