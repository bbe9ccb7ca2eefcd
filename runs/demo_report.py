#!/usr/bin/env python3
"""Summarize a demo run: where each stage's output is and the figures that say whether it worked.

Writes ``REPORT.md`` into the run directory and prints it.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from lumi.formats.packed import load_packed_split, unigram_entropy


def load(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def main(run_dir: Path) -> None:
    lines = [f"# Demo report: {run_dir}", ""]
    corpus = load(run_dir / "corpus" / "manifest.json")
    if corpus:
        lines += [f"- 10 corpus: `{run_dir / 'corpus'}` — {corpus['documents']:,} documents, "
                  f"{corpus['bytes'] / 1e6:.1f} MB in {len(corpus['shards'])} shards"]
    tokenizer = load(run_dir / "tokenizer" / "validation_report.json")
    meta = load(run_dir / "tokenizer" / "tokenizer_meta.json")
    if tokenizer and meta:
        lines += [f"- 20 tokenizer: `{run_dir / 'tokenizer'}` — {meta['model_type']} vocab {meta['vocab_size']:,}, "
                  f"{tokenizer['bytes_per_token']:.2f} bytes/token on held-out text, "
                  f"unknown rate {tokenizer['unk_rate']:.4f}, round trip exact {tokenizer['roundtrip_exact_fraction']:.3f}"]
    packed = load(run_dir / "packed" / "final_manifest.json")
    if packed:
        train, val = packed["splits"]["train"], packed["splits"]["val"]
        lines += [f"- 30 packed: `{run_dir / 'packed'}` — seq_len {packed['seq_len']}, {packed['dtype']}, "
                  f"train {train['rows']:,} rows ({train['tokens']:,} tokens), val {val['rows']:,} rows "
                  f"({val['tokens']:,} tokens)"]
    metrics_file = run_dir / "checkpoints" / "demo" / "metrics.jsonl"
    if metrics_file.is_file() and packed:
        records = [json.loads(line) for line in metrics_file.read_text().splitlines() if line.strip()]
        val = [r for r in records if "val/loss" in r]
        if val:
            baseline = unigram_entropy(load_packed_split(run_dir / "packed", "train"))
            lines += [f"- 40 pretrain: `{run_dir / 'checkpoints' / 'demo' / 'final'}` — step {val[-1]['step']}: "
                      f"val loss **{val[-1]['val/loss']:.3f}** nats/token ({val[-1]['val/bpb']:.3f} bits/byte) vs "
                      f"**{baseline:.3f}** for the unigram-entropy baseline (the best a model ignoring context can do)"]
    results = load(run_dir / "evaluation" / "evaluation_results.json")
    if results:
        lines.append(f"- 50 evaluate: `{run_dir / 'evaluation' / 'report.md'}`")
        for name, task in results["tasks"].items():
            acc = task["metrics"]["acc"]
            lines.append(f"  - {name}: acc {acc['value']:.3f} ± {acc['stderr']:.3f} vs chance {task['chance']:.3f} "
                         f"(n={task['num_items']})")
    text = "\n".join(lines) + "\n"
    (run_dir / "REPORT.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "out/demo"))
