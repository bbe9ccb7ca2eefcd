"""Benchmark stage 30 (``lumi pack``): throughput against raw sentencepiece, and peak memory on a large corpus.

Throughput (default): builds a corpus directory of ``--mb`` MB of real sample text (the pretraining samples, repeated
with each copy's sentences shuffled so no two documents are identical), then times, on the same cores in the same run,
(a) raw ``sp.encode(batch, num_threads=cores)`` over the texts already in memory, in batches of ``--batch-docs``, and
(b) the full ``pack_corpus`` (read parquet shards -> encode -> split -> write .bin files). Target: (b) >= 0.8x (a).

Memory (``--memory``): writes a ``--memory-mb`` MB corpus to disk in a streaming way, packs it in a child process
(``python -m lumi pack``) and reports the child's peak RSS (``getrusage(RUSAGE_CHILDREN).ru_maxrss``). Target: <= 1.5 GB.

Long document (``--long-mb N``): a corpus of ~1 MB of ordinary documents plus one N MB document (the books of the
samples, repeated), packed in a child process per run, each reporting its own peak RSS (``VmHWM``): documents encoded
whole (``PART_CHARS`` set beyond any document: the path before long documents were encoded in parts) against the
parts of ``lumi.data.packing.PART_CHARS`` characters, with wall time and tokens per second of each.

    .venv/bin/python benchmarks/bench_packing.py --mb 60
    .venv/bin/python benchmarks/bench_packing.py --memory --memory-mb 1024 --workdir /tmp/bench-packing
    .venv/bin/python benchmarks/bench_packing.py --long-mb 10 --threads 2
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

import sentencepiece as spm  # noqa: E402

from lumi.core.config import CONFIG_DIR, load_config  # noqa: E402
from lumi.core.files import atomic_write_json  # noqa: E402
from lumi.core.stage_args import available_cores  # noqa: E402
from lumi.formats.corpus import CORPUS_FORMAT, MANIFEST, ShardWriter  # noqa: E402
from lumi.data.packing import PackingConfig, pack_corpus  # noqa: E402
from lumi.data.tokenizer_training import TokenizerConfig, train_tokenizer  # noqa: E402

SAMPLES_DIR = REPO_ROOT.parent / "shared" / "data" / "samples"
PRETRAINING_SAMPLES = ["gutenberg_pg11.txt", "gutenberg_pg84.txt", "tinyshakespeare_train90.txt",
                       "wiki_demo_llamafactory_first15.txt", "c4_demo_llamafactory_first150.jsonl",
                       "dolma_cc_en_head-0091.jsonl"]


def sample_documents(samples_dir: Path, doc_chars: int = 3000) -> list[list[str]]:
    """The pretraining samples as documents of about ``doc_chars`` characters, each a list of sentences."""
    texts = []
    for name in PRETRAINING_SAMPLES:
        path = samples_dir / name
        if name.endswith(".jsonl"):
            texts += [json.loads(line)["text"] for line in path.open(encoding="utf-8")]
        else:
            texts += path.read_text(encoding="utf-8").split("\n\n")
    documents, current, size = [], [], 0
    for text in texts:
        for sentence in re.split(r"(?<=[.!?])\s+", text):
            current.append(sentence)
            size += len(sentence) + 1
            if size >= doc_chars:
                documents.append(current)
                current, size = [], 0
    return documents


def generate_texts(samples_dir: Path, total_bytes: int, seed: int = 0) -> Iterator[str]:
    """Yield documents until ``total_bytes`` of text: copy k of the samples has each document's sentences shuffled."""
    documents = sample_documents(samples_dir)
    rng = random.Random(seed)
    produced = 0
    while True:
        for sentences in documents:
            shuffled = sentences[:]
            rng.shuffle(shuffled)
            text = " ".join(shuffled)
            produced += len(text.encode("utf-8"))
            yield text
            if produced >= total_bytes:
                return


def write_corpus(directory: Path, texts: Iterator[str]) -> int:
    directory.mkdir(parents=True, exist_ok=True)
    writer = ShardWriter(directory)
    count = 0
    for count, text in enumerate(texts, 1):
        writer.add(text, "bench", str(count))
    shards = writer.close()
    atomic_write_json(directory / MANIFEST, {"format": CORPUS_FORMAT, "documents": count,
                                             "bytes": sum(s["bytes"] for s in shards), "shards": shards})
    return count


def train_stage20_tokenizer(directory: Path, workdir: Path, samples_dir: Path, vocab_size: int) -> Path:
    """The real stage 20 (config/pretrain/tokenizer/spm32k.json) trained on one copy of the samples: the encode speed
    is what is measured, and training on the full benchmark text would take long on a small machine."""
    corpus = workdir / "tokenizer-corpus"
    if not (corpus / MANIFEST).is_file():
        write_corpus(corpus, (" ".join(sentences) for sentences in sample_documents(samples_dir)))
    config = load_config(TokenizerConfig, CONFIG_DIR / "pretrain" / "tokenizer" / "spm32k.json",
                         flag_values={"vocab_size": vocab_size})
    train_tokenizer(corpus, directory, config)
    return directory


def timed(function, *args, **kwargs):
    """(result, wall seconds, CPU seconds of this process: all its threads)."""
    wall, cpu = time.perf_counter(), time.process_time()
    result = function(*args, **kwargs)
    return result, time.perf_counter() - wall, time.process_time() - cpu


def raw_encode(tokenizer_dir: Path, texts: list[str], batch_docs: int, threads: int) -> int:
    processor = spm.SentencePieceProcessor(model_file=str(tokenizer_dir / "spm.model"))
    tokens = 0
    for first in range(0, len(texts), batch_docs):
        tokens += sum(map(len, processor.encode(texts[first:first + batch_docs], num_threads=threads)))
    return tokens


def throughput(args: argparse.Namespace, workdir: Path, tokenizer_dir: Path) -> None:
    threads = args.threads or available_cores()
    texts = list(generate_texts(args.samples_dir, args.mb << 20))
    text_bytes = sum(len(t.encode("utf-8")) for t in texts)
    write_corpus(workdir / "corpus", iter(texts))
    config = PackingConfig(seq_len=1024, val_fraction=0.005, batch_docs=args.batch_docs, num_threads=threads)
    runs: dict[str, list[tuple[float, float]]] = {"raw": [], "pack": []}
    for _ in range(args.repeats):  # interleaved, best of each: the machine may be shared
        tokens, wall, cpu = timed(raw_encode, tokenizer_dir, texts, args.batch_docs, threads)
        runs["raw"].append((wall, cpu))
        manifest, wall, cpu = timed(pack_corpus, workdir / "corpus", tokenizer_dir, workdir / "packed", config,
                                    force=True)
        runs["pack"].append((wall, cpu))
    packed_tokens = sum(s["tokens"] + s["dropped_tail_tokens"] for s in manifest["splits"].values())
    print(f"text: {len(texts):,} documents, {text_bytes / 1e6:.1f} MB, {tokens:,} tokens "
          f"(+{packed_tokens - tokens:,} BOS/EOS); {threads} threads, batch_docs={args.batch_docs}, "
          f"vocab={manifest['vocab_size']}")
    best = {name: (min(w for w, _ in times), min(c for _, c in times)) for name, times in runs.items()}
    for name, label in (("raw", "raw sp.encode (in memory)"), ("pack", "pack_corpus (end to end)")):
        wall, cpu = best[name]
        print(f"{label:26s} {tokens / wall / 1e6:5.2f} M tokens/s wall ({wall:.2f} s), {cpu:.2f} CPU s; "
              f"runs (wall/cpu): {', '.join(f'{w:.2f}/{c:.2f}' for w, c in runs[name])}")
    print(f"ratio pack / raw: {best['raw'][0] / best['pack'][0]:.2f}x by wall time (target >= 0.8x), "
          f"{best['raw'][1] / best['pack'][1]:.2f}x by CPU time")


def memory(args: argparse.Namespace, workdir: Path, tokenizer_dir: Path) -> None:
    corpus = workdir / f"corpus-{args.memory_mb}mb"
    if not (corpus / MANIFEST).is_file():
        start = time.perf_counter()
        count = write_corpus(corpus, generate_texts(args.samples_dir, args.memory_mb << 20))
        print(f"wrote {count:,} documents ({args.memory_mb} MB of text) to {corpus} in {time.perf_counter() - start:.0f} s")
    command = [sys.executable, "-m", "lumi", "pack", "--corpus-dir", str(corpus), "--tokenizer-dir",
               str(tokenizer_dir), "--output-dir", str(workdir / "packed-memory"), "--force", "--seq-len", "1024",
               "--set", f"batch_docs={args.batch_docs}", "--set", f"num_threads={args.threads}"]
    start = time.perf_counter()
    subprocess.run(command, check=True, cwd=REPO_ROOT)
    seconds = time.perf_counter() - start
    peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # kilobytes on Linux
    manifest = json.loads((workdir / "packed-memory" / "final_manifest.json").read_text())
    tokens = sum(s["tokens"] + s["dropped_tail_tokens"] for s in manifest["splits"].values())
    print(f"packed {args.memory_mb} MB of text ({tokens:,} tokens) in {seconds:.0f} s "
          f"({tokens / seconds / 1e6:.2f} M tokens/s); peak RSS of the packing process: {peak_kb / 1024:.0f} MiB "
          f"(target <= 1536 MiB)")


# The child reports its own peak (VmHWM): ru_maxrss would also count the parent's pages it was forked from.
PACK_CHILD = """
import os, re, sys
from lumi.data import packing as pack
pack.PART_CHARS = int(os.environ["PART_CHARS"])
from lumi.cli import main
status = main(["pack", *sys.argv[1:]])
print("peak_kib", re.search(r"VmHWM:\\s*(\\d+)", open("/proc/self/status").read()).group(1))
sys.exit(status)
"""


def long_document(args: argparse.Namespace, workdir: Path, tokenizer_dir: Path) -> None:
    from lumi.data.packing import PART_CHARS

    corpus = workdir / f"corpus-long-{args.long_mb}mb"
    books = "".join((args.samples_dir / name).read_text(encoding="utf-8")
                    for name in ("gutenberg_pg11.txt", "gutenberg_pg84.txt", "tinyshakespeare_train90.txt"))
    long_text = (books * (1 + (args.long_mb << 20) // len(books)))[:args.long_mb << 20]
    if not (corpus / MANIFEST).is_file():
        write_corpus(corpus, iter([*generate_texts(args.samples_dir, 1 << 20), long_text]))
    command = [sys.executable, "-c", PACK_CHILD, "--corpus-dir", str(corpus), "--tokenizer-dir", str(tokenizer_dir),
               "--output-dir", str(workdir / "packed-long"), "--force", "--seq-len", "1024",
               "--set", f"batch_docs={args.batch_docs}", "--set", f"num_threads={args.threads}"]
    print(f"one document of {len(long_text.encode('utf-8')) / 1e6:.1f} MB among ~1 MB of others; "
          f"{args.threads or available_cores()} threads")
    runs: dict[str, list[tuple[float, int]]] = {"whole": [], "parts": []}
    for _ in range(args.repeats):  # interleaved: the machine may be shared
        for name, part_chars in (("whole", 1 << 62), ("parts", PART_CHARS)):
            start = time.perf_counter()
            child = subprocess.run(command, cwd=REPO_ROOT, env={**os.environ, "PART_CHARS": str(part_chars)},
                                   check=True, stdout=subprocess.PIPE, text=True)
            peak_kib = int(child.stdout.split("peak_kib ")[-1])
            runs[name].append((time.perf_counter() - start, peak_kib))
    manifest = json.loads((workdir / "packed-long" / "final_manifest.json").read_text())
    tokens = sum(s["tokens"] + s["dropped_tail_tokens"] for s in manifest["splits"].values())
    for name, label in (("whole", "each document whole (before)"), ("parts", f"parts of {PART_CHARS:,} chars (now)")):
        wall = min(w for w, _ in runs[name])
        print(f"{label:34s} peak RSS {max(kb for _, kb in runs[name]) / 1024:5.0f} MiB "
              f"(runs: {', '.join(f'{kb / 1024:.0f}' for _, kb in runs[name])}); {tokens / wall / 1e6:.2f} M tokens/s "
              f"({wall:.1f} s; runs: {', '.join(f'{w:.1f}' for w, _ in runs[name])})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mb", type=int, default=60, help="MB of text for the throughput run (default 60)")
    parser.add_argument("--memory", action="store_true", help="measure peak RSS of packing a large corpus instead")
    parser.add_argument("--memory-mb", type=int, default=1024, help="MB of text for --memory (default 1024)")
    parser.add_argument("--long-mb", type=int, help="measure packing one document of this many MB instead")
    parser.add_argument("--batch-docs", type=int, default=PackingConfig().batch_docs)
    parser.add_argument("--threads", type=int, default=0, help="encoding threads (0 = all cores)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--vocab-size", type=int, default=24000,
                        help="unigram vocabulary (default 24000: about the most the ~3 MB of samples support; "
                             "32000 needs more text -- pass --tokenizer-dir to use a real 32k tokenizer)")
    parser.add_argument("--tokenizer-dir", type=Path, help="reuse a stage-20 tokenizer instead of training one")
    parser.add_argument("--samples-dir", type=Path, default=SAMPLES_DIR)
    parser.add_argument("--workdir", type=Path, help="keep corpora and outputs here (default: a temporary dir)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-packing-") as scratch:
        workdir = args.workdir or Path(scratch)
        tokenizer_dir = args.tokenizer_dir
        if tokenizer_dir is None:
            tokenizer_dir = workdir / f"stage20-tokenizer-{args.vocab_size}"
            if not (tokenizer_dir / "spm.model").is_file():
                start = time.perf_counter()
                train_stage20_tokenizer(tokenizer_dir, workdir, args.samples_dir, args.vocab_size)
                print(f"trained a {args.vocab_size}-piece stage-20 tokenizer on the samples in "
                      f"{time.perf_counter() - start:.0f} s")
        print(f"machine: {os.cpu_count()} CPUs ({available_cores()} available), python {sys.version.split()[0]}, "
              f"sentencepiece {spm.__version__}")
        (long_document if args.long_mb else memory if args.memory else throughput)(args, workdir, tokenizer_dir)


if __name__ == "__main__":
    main()
