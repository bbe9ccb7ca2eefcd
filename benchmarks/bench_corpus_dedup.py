"""Dedup quality of stage 10 with its default settings: distinct documents spread over 3 sources, plus exact
copies and near copies (5% of the words replaced) of some of them, each planted in another source than its
original. Reports the share of planted copies removed and of distinct documents wrongly removed.

    .venv/bin/python benchmarks/bench_corpus_dedup.py --distinct 5000 --exact 500 --near 500
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq

from bench_corpus_data import planted_sources, sentence_pool, write_jsonl_sources
from lumi.core.config import validate_config
from lumi.corpus.config import CorpusConfig
from lumi.corpus.build import build_corpus

REPO = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--distinct", type=int, default=5000)
    parser.add_argument("--exact", type=int, default=500)
    parser.add_argument("--near", type=int, default=500)
    parser.add_argument("--near-fraction", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work-dir", type=Path, default=None)
    args = parser.parse_args()
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="bench-dedup-"))
    pool = sentence_pool(REPO.parent / "shared" / "data" / "samples")
    sources, plants = planted_sources(pool, args.seed, args.distinct, args.exact, args.near,
                                      near_fraction=args.near_fraction)
    paths = write_jsonl_sources(sources, work / "input")
    config = validate_config(CorpusConfig, {
        "sources": [{"type": "hub", "name": name, "dataset": "json", "data_files": [str(path)], "id_column": "id"}
                    for name, path in paths.items()],
        "executor": {"tasks": 2, "workers": 2}}, "benchmark config")
    started = time.time()
    manifest = build_corpus(config, work / "corpus", force=True)
    seconds = time.time() - started
    kept = {i for shard in manifest["shards"]
            for i in pq.read_table(work / "corpus" / shard["file"], columns=["id"]).column(0).to_pylist()}
    copies: dict[str, list[str]] = {}
    for _, original, copy in plants:
        copies.setdefault(original, []).append(copy)
    copy_ids = {copy for _, _, copy in plants}
    originals = [f"{name}:{k}" for name, texts in sources.items() for k in range(len(texts))
                 if f"{name}:{k}" not in copy_ids]
    # A distinct document is wrongly removed when neither it nor any copy of it survived.
    wrongly = sum(1 for o in originals if o not in kept and not any(c in kept for c in copies.get(o, [])))
    result = {"config": {"dedup": manifest["config"]["dedup"]},
              "documents": sum(len(t) for t in sources.values()), "seconds": round(seconds, 1)}
    for kind in ("exact", "near"):
        pairs = [(o, c) for k, o, c in plants if k == kind]
        removed = sum(1 for o, c in pairs if not (o in kept and c in kept))
        result[f"{kind}_copies_removed_percent"] = round(100 * removed / len(pairs), 2)
    result["distinct_wrongly_removed_percent"] = round(100 * wrongly / len(originals), 3)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
