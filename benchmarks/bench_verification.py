"""What the fault checks of docs/RELIABILITY.md cost: verifying stage outputs against their manifests, and writing
and verifying checkpoint checksums.

Measures, on files it writes under ``--workdir``:

* sha256 (``lumi.files.sha256_file``) and the packed-split id-range scan (``lumi.packed.check_token_ids``) in MB/s
  over a ``--mb`` MB uint16 token file (page cache warm: the figure is the CPU cost, not the disk's);
* the share of ``pack_corpus`` spent checking the corpus shards' sha256 (``iter_text_batches``), on a corpus of
  ``--corpus-mb`` MB of synthetic-world text with a 2,048-piece BPE tokenizer;
* the share of ``save_checkpoint`` spent on ``checksums.json`` and the time ``checkpoint_problem`` takes to verify the
  checkpoint at resume, for the ``--model`` architecture (model + AdamW state).

    .venv/bin/python benchmarks/bench_verification.py --mb 512 --corpus-mb 16 --model micro
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from lumi.core import files  # noqa: E402
from lumi.data.synthetic import SyntheticWorld  # noqa: E402
from lumi.formats import checkpoint  # noqa: E402
from lumi.formats import corpus as store  # noqa: E402
from lumi.formats.packed import check_token_ids  # noqa: E402
from lumi.formats.tokenizer import load_tokenizer_meta  # noqa: E402
from lumi.model import build_model, load_architecture  # noqa: E402
from lumi.data.packing import PackingConfig, pack_corpus  # noqa: E402
from lumi.data.tokenizer_training import TokenizerConfig, train_tokenizer  # noqa: E402


def timed(function, *args, **kwargs) -> tuple[float, object]:
    start = time.perf_counter()
    result = function(*args, **kwargs)
    return time.perf_counter() - start, result


def token_file_throughput(workdir: Path, megabytes: int) -> None:
    path = workdir / "train.bin"
    rng = np.random.default_rng(0)
    rng.integers(0, 32000, size=megabytes * (1 << 20) // 2, dtype=np.uint16).tofile(path)
    files.sha256_file(path)  # warm the page cache
    rows = np.memmap(path, dtype=np.uint16, mode="r").reshape(-1, 512)
    sha_seconds, _ = timed(files.sha256_file, path)
    scan_seconds, _ = timed(check_token_ids, path, rows, 32000)
    print(f"{megabytes} MB token file: sha256 {megabytes / sha_seconds:,.0f} MB/s, "
          f"id-range scan {megabytes / scan_seconds:,.0f} MB/s")


def corpus_check_share(workdir: Path, corpus_mb: int) -> None:
    world = SyntheticWorld.generate(seed=0, num_people=200, num_places=30)
    corpus = workdir / "corpus"
    corpus.mkdir()
    writer = store.ShardWriter(corpus, shard_bytes=4 << 20)
    size = documents = 0
    for text in world.documents(10**9, seed=1):
        writer.add(text, "synthetic", str(documents))
        size += len(text.encode())
        documents += 1
        if size >= corpus_mb << 20:
            break
    shards = writer.close()
    files.atomic_write_json(corpus / store.MANIFEST, {"format": store.CORPUS_FORMAT, "documents": documents,
                                                      "bytes": size, "shards": shards})
    tokenizer = workdir / "tokenizer"
    train_tokenizer(corpus, tokenizer, TokenizerConfig(vocab_size=2048, model_type="bpe", num_threads=2,
                                                       max_training_bytes=4 << 20))
    checked = 0.0
    original = files.verify_file

    def counting_verify(*args, **kwargs):
        nonlocal checked
        seconds, _ = timed(original, *args, **kwargs)
        checked += seconds

    store.verify_file = counting_verify
    try:
        total, _ = timed(pack_corpus, corpus, tokenizer, workdir / "packed", PackingConfig(seq_len=256))
    finally:
        store.verify_file = original
    print(f"pack of {corpus_mb} MB ({len(shards)} shards): {total:.2f} s, of which shard checks {checked:.3f} s "
          f"({checked / total:.1%})")
    return tokenizer


def checkpoint_share(workdir: Path, tokenizer: Path, model_name: str) -> None:
    arch = load_architecture(model_name, vocab_size=load_tokenizer_meta(tokenizer)["vocab_size"])
    model = build_model(arch)
    optimizer = torch.optim.AdamW(model.parameters())
    model(torch.zeros(1, 8, dtype=torch.long), labels=torch.zeros(1, 8, dtype=torch.long)).loss.backward()
    optimizer.step()
    state = {"step": 1, "optimizer": optimizer.state_dict()}
    hashing = 0.0
    original = checkpoint.sha256_file

    def counting_sha(path):
        nonlocal hashing
        seconds, digest = timed(original, path)
        hashing += seconds
        return digest

    checkpoint.sha256_file = counting_sha
    try:
        total, directory = timed(
            checkpoint.save_checkpoint, workdir / "step_1",
            lambda staging: checkpoint.save_pretrained_with_tokenizer(staging, model, tokenizer), state,
            checkpoint.PRETRAIN_CONFIG_FILE, {})
        hashing_at_save = hashing
        verify_seconds, problem = timed(checkpoint.checkpoint_problem, directory)
    finally:
        checkpoint.sha256_file = original
    assert problem is None, problem
    size = sum(p.stat().st_size for p in directory.iterdir()) / 1e6
    print(f"checkpoint of '{model_name}' ({size:,.0f} MB with optimizer state): save {total:.2f} s, of which "
          f"checksums {hashing_at_save:.2f} s ({hashing_at_save / total:.1%}); verification at resume "
          f"{verify_seconds:.2f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=512, help="size of the token file")
    parser.add_argument("--corpus-mb", type=int, default=16, help="size of the corpus packed")
    parser.add_argument("--model", default="micro", help="architecture of the checkpoint (config/architectures)")
    parser.add_argument("--workdir", type=Path, help="where to write (default: a temporary directory)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.workdir) as scratch:
        workdir = Path(scratch)
        token_file_throughput(workdir, args.mb)
        tokenizer = corpus_check_share(workdir, args.corpus_mb)
        checkpoint_share(workdir, tokenizer, args.model)


if __name__ == "__main__":
    main()
