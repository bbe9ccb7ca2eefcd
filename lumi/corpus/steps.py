"""The four datatrove pipeline steps of stage 10. Each runs as the only step of its own executor stage:

1. ``ScanSources`` (``tasks`` tasks): read this task's share of every source, clean and filter, and write the
   surviving candidates (text, UTF-8 size, content hash) and their MinHash signatures to ``_work/scan``.
   A budgeted source stops once this task holds ``read_margin * budget / tasks`` tokens of candidates.
2. ``PlanCorpus`` (1 task): over all candidates, drop exact duplicates, then near duplicates (first source in
   config order wins, then content hash), then keep each source's documents in the order of a seeded hash of their
   content until the source's budget is met. Every decision is a function of the document, not of the task that
   read it, so 1 or 100 workers give the same budgets.
3. ``WriteShards`` (``tasks`` tasks): write the kept candidates of one scan task as parquet shards.
4. ``FinalizeCorpus`` (1 task): sum everything into ``manifest.json`` (written last, atomically) and
   ``DATA_CARD.md``, then delete ``_work``.

Tasks communicate through files only, so datatrove can run them in processes, Slurm jobs or Ray workers; a task
writes its outputs under temporary names and renames them when done, and datatrove's completion markers let a rerun
skip finished tasks.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from datatrove.pipeline.base import PipelineStep

from lumi.core.errors import LumiError
from lumi.core.files import atomic_write_json, atomic_write_text, read_json
from lumi.core.hashing import digest_keys
from lumi.corpus.config import CorpusConfig
from lumi.corpus.filters import DocumentFilter
from lumi.corpus.minhash import MinHasher, near_duplicate_of
from lumi.corpus.sources import iter_source
from lumi.formats.corpus import MANIFEST, ShardWriter

WORK = "_work"
CANDIDATE_SCHEMA = pa.schema([("text", pa.string()), ("source", pa.string()), ("id", pa.string()),
                              ("bytes", pa.int64()), ("digest", pa.binary(16))])
# Plan decisions per candidate.
KEEP, EXACT_DUPLICATE, NEAR_DUPLICATE, OVER_BUDGET = 0, 1, 2, 3
PROGRESS_SECONDS = 1.0


def work_path(build_dir: str | Path, *parts: str) -> Path:
    return Path(build_dir, WORK, *parts)


class CorpusStep(PipelineStep):
    """A step that reads and writes files only (no document stream in or out); its time goes into datatrove's
    stats (logs/<stage>/stats.json)."""

    type = "📚 LUMI CORPUS"

    def __init__(self, config: CorpusConfig, build_dir: str):
        super().__init__()
        self.config = config
        self.build_dir = build_dir

    def run(self, data=None, rank: int = 0, world_size: int = 1) -> None:
        with self.track_time():
            self.execute(rank, world_size)

    def execute(self, rank: int, world_size: int) -> None:
        raise NotImplementedError


class ScanSources(CorpusStep):
    name = "scan: read, clean, filter, sign"

    def execute(self, rank: int, world_size: int) -> None:
        out_dir = work_path(self.build_dir, "scan")
        out_dir.mkdir(parents=True, exist_ok=True)
        progress_path = work_path(self.build_dir, "progress", f"{rank:05d}.json")
        progress_path.parent.mkdir(parents=True, exist_ok=True)
        hasher = MinHasher(self.config.dedup.near)
        table_tmp, sig_tmp = out_dir / f".{rank:05d}.parquet.tmp", out_dir / f".{rank:05d}.sig.tmp"
        writer = pq.ParquetWriter(table_tmp, CANDIDATE_SCHEMA, compression="zstd")
        rows: dict[str, list] = {name: [] for name in CANDIDATE_SCHEMA.names}
        stats: dict[str, dict[str, Any]] = {}
        totals = {"documents": 0, "bytes": 0}
        last_report = time.monotonic()
        with open(sig_tmp, "wb") as signatures:
            for source in self.config.sources:
                document_filter = DocumentFilter(self.config.cleaning, self.config.filters,
                                                 frozenset(source.skip_filters))
                sign = self.config.dedup.near.enabled and source.near_dedup
                source_stats = stats[source.name] = {"read": 0, "candidates": 0, "candidate_bytes": 0,
                                                     "dropped": Counter({r: 0 for r in document_filter.reasons()}),
                                                     "stopped_at_budget": False}
                budget = self.config.budget_of(source)
                byte_cap = (None if budget is None else
                            self.config.read_margin * budget * self.config.bytes_per_token / world_size)
                for doc_id, raw in iter_source(source, rank, world_size):
                    source_stats["read"] += 1
                    totals["documents"] += 1
                    if raw is None:
                        source_stats["dropped"]["non_utf8"] += 1
                        continue
                    totals["bytes"] += len(raw.encode("utf-8"))
                    text, reason = document_filter.apply(raw)
                    if text is None:
                        source_stats["dropped"][reason] += 1
                    else:
                        data_bytes = text.encode("utf-8")
                        rows["text"].append(text)
                        rows["source"].append(source.name)
                        rows["id"].append(doc_id)
                        rows["bytes"].append(len(data_bytes))
                        rows["digest"].append(hashlib.blake2b(data_bytes, digest_size=16).digest())
                        signatures.write((hasher.signature(text) if sign else hasher.empty_signature()).tobytes())
                        source_stats["candidates"] += 1
                        source_stats["candidate_bytes"] += len(data_bytes)
                        if len(rows["text"]) >= 1024:
                            writer.write_table(pa.table(rows, schema=CANDIDATE_SCHEMA))
                            rows = {name: [] for name in CANDIDATE_SCHEMA.names}
                    if time.monotonic() - last_report > PROGRESS_SECONDS:
                        atomic_write_json(progress_path, totals)
                        last_report = time.monotonic()
                    if byte_cap is not None and source_stats["candidate_bytes"] >= byte_cap:
                        source_stats["stopped_at_budget"] = True
                        break
                self.stat_update("documents", value=source_stats["read"])
        writer.write_table(pa.table(rows, schema=CANDIDATE_SCHEMA))
        writer.close()
        os.replace(table_tmp, out_dir / f"{rank:05d}.parquet")
        os.replace(sig_tmp, out_dir / f"{rank:05d}.sig")
        atomic_write_json(out_dir / f"{rank:05d}.stats.json", stats)
        atomic_write_json(progress_path, totals)


def read_scan_stats(build_dir: str | Path, tasks: int) -> dict[str, dict[str, Any]]:
    """Per-source scan counts summed over tasks."""
    total: dict[str, dict[str, Any]] = {}
    for rank in range(tasks):
        for name, s in read_json(work_path(build_dir, "scan", f"{rank:05d}.stats.json")).items():
            t = total.setdefault(name, {"read": 0, "candidates": 0, "candidate_bytes": 0, "dropped": Counter(),
                                        "stopped_at_budget": False})
            for key in ("read", "candidates", "candidate_bytes"):
                t[key] += s[key]
            t["dropped"].update(s["dropped"])
            t["stopped_at_budget"] |= s["stopped_at_budget"]
    return total


class PlanCorpus(CorpusStep):
    name = "plan: exact + near dedup, budgets"

    def __init__(self, config: CorpusConfig, build_dir: str, scan_tasks: int):
        super().__init__(config, build_dir)
        self.scan_tasks = scan_tasks

    def execute(self, rank: int, world_size: int) -> None:
        config = self.config
        scan = work_path(self.build_dir, "scan")
        source_index = {s.name: i for i, s in enumerate(config.sources)}
        tables = [pq.read_table(scan / f"{r:05d}.parquet", columns=["source", "bytes", "digest"])
                  for r in range(self.scan_tasks)]
        sources = np.array([source_index[s] for t in tables for s in t.column("source").to_pylist()], dtype=np.int64)
        sizes = np.array([n for t in tables for n in t.column("bytes").to_pylist()], dtype=np.int64)
        digests = np.frombuffer(b"".join(d for t in tables for d in t.column("digest").to_pylist()),
                                dtype=np.uint8).reshape(-1, 16)
        decision = np.full(len(sources), KEEP, dtype=np.uint8)
        # Priority (smaller is kept): source in config order, then content hash; identical texts: first read.
        halves = digests.view(">u8")
        priority = np.lexsort((halves[:, 1], halves[:, 0], sources))
        rank_of = np.empty(len(sources), dtype=np.int64)
        rank_of[priority] = np.arange(len(sources))
        if config.dedup.exact and len(sources) > 1:
            by_content = np.lexsort((rank_of, halves[:, 1], halves[:, 0]))  # equal texts adjacent, best first
            ordered = halves[by_content]
            repeat = np.r_[False, (ordered[1:] == ordered[:-1]).all(axis=1)]
            decision[by_content[repeat]] = EXACT_DUPLICATE
        near = config.dedup.near
        eligible = np.array([s.near_dedup for s in config.sources], dtype=bool)
        candidates = np.flatnonzero((decision == KEEP) & eligible[sources])
        if near.enabled and len(candidates) > 1:
            signatures = np.concatenate([
                np.fromfile(scan / f"{r:05d}.sig", dtype=np.uint32).reshape(-1, near.num_permutations)
                for r in range(self.scan_tasks)])[candidates]
            roots = near_duplicate_of(signatures, rank_of[candidates], near)
            decision[candidates[roots != np.arange(len(candidates))]] = NEAR_DUPLICATE
        keys = digest_keys(digests, config.budget_seed)  # the seeded order a source's documents fill its budget in
        plan_sources = {}
        for index, source in enumerate(config.sources):
            mine = np.flatnonzero((sources == index) & (decision == KEEP))
            available = int(sizes[mine].sum())
            budget = config.budget_of(source)
            if budget is not None and available > budget * config.bytes_per_token:
                ordered = mine[np.argsort(keys[mine], kind="stable")]
                decision[ordered[np.cumsum(sizes[ordered]) > budget * config.bytes_per_token]] = OVER_BUDGET
            of_source = decision[sources == index]
            plan_sources[source.name] = {
                "available_bytes": available,
                "exact_duplicates": int((of_source == EXACT_DUPLICATE).sum()),
                "near_duplicates": int((of_source == NEAR_DUPLICATE).sum()),
                "over_budget": int((of_source == OVER_BUDGET).sum()),
            }
        plan_dir = work_path(self.build_dir, "plan")
        plan_dir.mkdir(parents=True, exist_ok=True)
        offsets = np.cumsum([t.num_rows for t in tables])[:-1]
        for task, part in enumerate(np.split(decision, offsets)):
            np.save(plan_dir / f"{task:05d}.npy", part)
        atomic_write_json(plan_dir / "plan.json", plan_sources)


class WriteShards(CorpusStep):
    name = "write: parquet shards"

    def execute(self, rank: int, world_size: int) -> None:
        build = Path(self.build_dir)
        prefix = f"shard_{rank:05d}_"
        for stale in build.glob(f"{prefix}*.parquet"):  # from an interrupted attempt of this task
            stale.unlink()
        decision = np.load(work_path(build, "plan", f"{rank:05d}.npy"))
        writer = ShardWriter(build, shard_bytes=self.config.shard_bytes, prefix=prefix)
        kept: dict[str, list[int]] = {}  # source -> [documents, bytes]
        row = 0
        candidates = pq.ParquetFile(work_path(build, "scan", f"{rank:05d}.parquet"))
        for batch in candidates.iter_batches(columns=["text", "source", "id"], batch_size=2048):
            columns = batch.to_pydict()
            for text, source, doc_id in zip(columns["text"], columns["source"], columns["id"]):
                if decision[row] == KEEP:
                    writer.add(text, source, doc_id)
                    counts = kept.setdefault(source, [0, 0])
                    counts[0] += 1
                    counts[1] += len(text.encode("utf-8"))
                row += 1
        atomic_write_json(work_path(build, "shards", f"{rank:05d}.json"), {"shards": writer.close(), "kept": kept})
        self.stat_update("documents", value=sum(c[0] for c in kept.values()))


class FinalizeCorpus(CorpusStep):
    name = "finalize: manifest + data card"

    def __init__(self, config: CorpusConfig, build_dir: str, scan_tasks: int):
        super().__init__(config, build_dir)
        self.scan_tasks = scan_tasks

    def execute(self, rank: int, world_size: int) -> None:
        from lumi.corpus.report import build_manifest, data_card

        build = Path(self.build_dir)
        shards: list[dict[str, Any]] = []
        kept: dict[str, list[int]] = {}
        for task in range(self.scan_tasks):
            written = read_json(work_path(build, "shards", f"{task:05d}.json"))
            shards += written["shards"]
            for source, (documents, num_bytes) in written["kept"].items():
                counts = kept.setdefault(source, [0, 0])
                counts[0] += documents
                counts[1] += num_bytes
        if not shards:
            raise LumiError("the corpus is empty: no document is left after deduplication and budgets")
        manifest = build_manifest(self.config, shards, read_scan_stats(build, self.scan_tasks),
                                  read_json(work_path(build, "plan", "plan.json")), kept,
                                  read_json(work_path(build, "run.json")))
        atomic_write_text(build / "DATA_CARD.md", data_card(manifest))
        atomic_write_json(build / MANIFEST, manifest)  # last: its presence means the corpus is complete
        shutil.rmtree(work_path(build), ignore_errors=True)
