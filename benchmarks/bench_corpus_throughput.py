"""Throughput of the full local stage-10 pipeline: cleaning, language ID, Gopher + C4 rules, exact + MinHash
near-dedup, shard writing, on >= 100 MB of English text, with peak RSS.

The input is built from the real samples (see bench_corpus_data): prose documents plus 3% junk (too short, number
tables, German), 1% exact and 1% near copies, in 8 JSON-lines files. ``lumi corpus`` runs as a subprocess on the
local datatrove executor; RSS is the sum over its process tree (workers included), sampled every 0.2 s. Besides
wall-clock MB/s it reports the CPU seconds of that tree, since the benchmark machine's cores may be shared.

    .venv/bin/python benchmarks/bench_corpus_throughput.py --size-mb 100 --tasks 4 --workers 2
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

from bench_corpus_data import make_document, replace_words, sentence_pool

REPO = Path(__file__).resolve().parent.parent
GERMAN = ("Der Fluss fliesst durch die alte Stadt, und die Brücke wurde im letzten Jahrhundert gebaut. Am Morgen "
          "gehen die Leute auf den Markt, um Brot und Obst zu kaufen. Am Abend spielen die Kinder am Brunnen.")


def make_input(directory: Path, size_mb: float, seed: int = 0, files: int = 8) -> tuple[int, int]:
    pool = sentence_pool(REPO.parent / "shared" / "data" / "samples")
    vocabulary = sorted({w for s in pool for w in s.split() if w.isalpha()})
    rng = random.Random(seed)
    handles = [open(directory / f"part{i}.jsonl", "w", encoding="utf-8") for i in range(files)]
    written = documents = 0
    previous: list[str] = []
    while written < size_mb * 1e6:
        roll = rng.random()
        if roll < 0.01 and previous:
            text = rng.choice(previous)
        elif roll < 0.02 and previous:
            text = replace_words(rng.choice(previous), 0.05, rng, vocabulary)
        elif roll < 0.03:
            text = "Click here."
        elif roll < 0.04:
            text = "\n".join(" | ".join(str(rng.randrange(10**6)) for _ in range(8)) for _ in range(40))
        elif roll < 0.05:
            text = " ".join([GERMAN] * rng.randint(2, 6))
        else:
            text = make_document(pool, rng)
            if len(previous) < 5000:
                previous.append(text)
        line = json.dumps({"text": text}, ensure_ascii=False) + "\n"
        handles[documents % files].write(line)
        written += len(text.encode("utf-8"))
        documents += 1
    for handle in handles:
        handle.close()
    return written, documents


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=float, default=100)
    parser.add_argument("--tasks", type=int, default=4)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--work-dir", type=Path, default=None)
    args = parser.parse_args()
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="bench-corpus-"))
    inputs = work / "input"
    inputs.mkdir(parents=True, exist_ok=True)
    started = time.time()
    text_bytes, documents = make_input(inputs, args.size_mb)
    print(f"input: {documents:,} documents, {text_bytes / 1e6:.1f} MB of text in {inputs} "
          f"(generated in {time.time() - started:.0f} s)", flush=True)
    config = {
        "sources": [{"type": "local", "name": "web", "paths": [str(inputs / "part*.jsonl")]}],
        "cleaning": {"min_chars": 200},
        "filters": {"language": {"enabled": True}, "gopher": {"enabled": True}, "c4": {"enabled": True}},
        "dedup": {"exact": True, "near": {"enabled": True}},
        "executor": {"type": "local", "tasks": args.tasks, "workers": args.workers},
    }
    config_path = work / "bench.json"
    config_path.write_text(json.dumps(config, indent=2))
    out = work / "corpus"
    command = [sys.executable, "-m", "lumi", "corpus", "--config", str(config_path), "--output-dir", str(out),
               "--force"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    started = time.time()
    process = psutil.Popen(command, env=env, stderr=subprocess.DEVNULL)
    peak_tree = peak_single = 0
    cpu_by_pid: dict[int, float] = {}  # last CPU time seen per process of the tree (workers are forkserver children)
    while process.poll() is None:
        rss = []
        for member in [process] + process.children(recursive=True):
            try:
                rss.append(member.memory_info().rss)
                times = member.cpu_times()
                cpu_by_pid[member.pid] = times.user + times.system
            except psutil.Error:
                continue
        if rss:
            peak_tree, peak_single = max(peak_tree, sum(rss)), max(peak_single, max(rss))
        time.sleep(0.2)
    seconds = time.time() - started
    cpu_seconds = sum(cpu_by_pid.values())
    if process.returncode != 0:
        sys.exit(f"lumi corpus failed with exit status {process.returncode}")
    manifest = json.loads((out / "manifest.json").read_text())
    source = manifest["sources"]["web"]
    print(json.dumps({
        "machine": f"{platform.node()} {os.cpu_count()} cores, {psutil.virtual_memory().total / 2**30:.0f} GiB",
        "command": " ".join(command),
        "input_mb": round(text_bytes / 1e6, 1), "input_documents": documents,
        "seconds": round(seconds, 1), "mb_per_s": round(text_bytes / 1e6 / seconds, 2),
        "documents_per_s": round(documents / seconds),
        # The cores are shared with other jobs: CPU time gives the throughput two idle cores would reach.
        "cpu_seconds": round(cpu_seconds, 1), "mb_per_cpu_second": round(text_bytes / 1e6 / cpu_seconds, 2),
        "peak_rss_tree_mb": round(peak_tree / 2**20), "peak_rss_single_process_mb": round(peak_single / 2**20),
        "kept": source["kept"], "dropped": {k: v for k, v in source["dropped"].items() if v},
        "exact_duplicates": source["exact_duplicates"], "near_duplicates": source["near_duplicates"],
        "load_average_1m": round(os.getloadavg()[0], 1),
    }, indent=2))


if __name__ == "__main__":
    main()
