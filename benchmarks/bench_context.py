"""What the documents before a document are worth, on bench_litgpt.py's finished models (issue #31).

bench_litgpt.py's documents are paragraphs of three books (stage 10 splits each .txt by paragraph), so in a packed
row the documents before a paragraph are paragraphs of the same book. A model trained without document masking
learns to use them; one trained with it never sees them. This scores, per model, every val document that has
something before it in its row (its first token a BOS at offset > 0 of the row), on the same target tokens (BOS and
PAD excluded, as in the evaluator), under four contexts of the same length:

- ``alone``: the document alone, positions from 0 (what the evaluator's docs mode scores it with);
- ``own``: the row's tokens before it (what causal mode scores it with: earlier paragraphs of the same book);
- ``same_book``: as many tokens ending at a document end elsewhere in val, from the same book (another place);
- ``other_book``: the same from another book.

``own`` - ``alone`` is what the neighbouring documents bring; ``same_book`` and ``other_book`` tell whether that is the
book itself (style, names) or the specific paragraphs before. Each document's book is found by matching its text
against the corpus's document ids (the .txt file); documents not matched to one book are left out.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_context.py \\
        --runs litgpt_adamw_seed0 adamw_litgpt_init_seed0
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

import numpy as np  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import torch  # noqa: E402
from transformers import AutoTokenizer, LlamaForCausalLM  # noqa: E402

from lumi.formats.packed import load_packed_split, read_packed_manifest  # noqa: E402
from lumi.lm.loss import UNSCORED_TARGETS  # noqa: E402
from lumi.model import build_model, load_architecture  # noqa: E402
from lumi.train.objectives.pretrain import tokenizer_vocab_size  # noqa: E402

CONTEXTS = ("alone", "own", "same_book", "other_book")
PREFIX_CHARS = 40  # characters of a document's text that name its book


def book_of(workdir: Path) -> dict[str, str | None]:
    """Text prefix -> the .txt file of every corpus document with that prefix (None when several books share it)."""
    table = pq.read_table(next((workdir / "corpus").glob("*.parquet")), columns=["text", "id"]).to_pylist()
    books: dict[str, str | None] = {}
    for row in table:
        prefix, book = row["text"][:PREFIX_CHARS], row["id"].rsplit(":", 1)[0]
        books[prefix] = book if books.get(prefix, book) == book else None
    return books


def documents(rows: np.ndarray, bos: int, eos: int, decode, books: dict) -> tuple[list[dict], list[tuple[int, int]]]:
    """Every document of every val row that starts at a BOS after the row's start, with its book (those matched to
    one), and every (row, offset just after an EOS): where a context may end."""
    found = []
    for index, row in enumerate(rows):
        starts = [int(i) for i in np.flatnonzero(row == bos) if i > 0]
        for start, end in zip(starts, [*starts[1:], len(row)]):
            text = decode(row[start:end].tolist())
            found.append({"row": index, "start": start, "end": end, "book": books.get(text[:PREFIX_CHARS])})
    ends = [(i, int(p) + 1) for i, row in enumerate(rows) for p in np.flatnonzero(row == eos)]
    return [d for d in found if d["book"] is not None], ends


def contexts(doc: dict, rows: np.ndarray, ends: list, row_book: dict, rng: np.random.Generator) -> dict:
    """The four inputs of one document (each: the context's tokens, then the document's)."""
    own = rows[doc["row"], doc["start"]:doc["end"]]
    length = doc["start"]
    inputs = {"alone": own, "own": rows[doc["row"], :doc["end"]]}
    for name, same in (("same_book", True), ("other_book", False)):
        pool = [(i, p) for i, p in ends if p >= length and i != doc["row"]
                and (row_book.get((i, p)) == doc["book"]) == same]
        i, p = pool[rng.integers(len(pool))]
        inputs[name] = np.concatenate([rows[i, p - length:p], own])
    return inputs


def score(model, inputs: list[np.ndarray], scored: int, pad: int) -> float:
    """Summed nats of the last ``scored`` tokens' targets of every input (plain causal attention, positions from 0)."""
    total = 0.0
    for begin in range(0, len(inputs), 16):
        batch = inputs[begin:begin + 16]
        width = max(len(x) for x in batch)
        ids = torch.full((len(batch), width), pad, dtype=torch.long)
        labels = torch.full((len(batch), width), -100, dtype=torch.long)
        for k, x in enumerate(batch):
            ids[k, :len(x)] = torch.from_numpy(x.astype(np.int64))
            labels[k, len(x) - scored[begin + k]:len(x)] = ids[k, len(x) - scored[begin + k]:len(x)]
        for token in UNSCORED_TARGETS:
            labels[labels == token] = -100
        with torch.no_grad():
            logits = model(input_ids=ids, use_cache=False).logits[:, :-1]
        total += float(torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                                         labels[:, 1:].reshape(-1), reduction="sum"))
    return total


def load(run_dir: Path, model: str, vocab_size: int):
    if run_dir.with_suffix(".pt").is_file():  # bench_litgpt.py's converted litgpt weights
        built = build_model(load_architecture(model, vocab_size=vocab_size))
        built.load_state_dict(torch.load(run_dir.with_suffix(".pt")))
        return built.eval()
    return LlamaForCausalLM.from_pretrained(run_dir / "final", dtype=torch.float32).eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", nargs="+", required=True, help="run names under <workdir>/runs (name_seedN)")
    parser.add_argument("--workdir", type=Path, default=REPO_ROOT / ".cache" / "bench_litgpt")
    parser.add_argument("--model", default="micro")
    parser.add_argument("--seed", type=int, default=0, help="draws the same_book / other_book contexts")
    args = parser.parse_args()
    torch.set_num_threads(1)
    packed = args.workdir / "packed"
    special = read_packed_manifest(packed)["special_ids"]
    rows = np.asarray(load_packed_split(packed, "val").rows)
    tokenizer = AutoTokenizer.from_pretrained(str(args.workdir / "tokenizer"))
    docs, ends = documents(rows, special["bos"], special["eos"],
                           lambda ids: tokenizer.decode(ids, skip_special_tokens=True), book_of(args.workdir))
    # the book of the document that ends at each end: the last matched document of that row starting before it
    row_book = {(i, p): next((d["book"] for d in reversed(docs) if d["row"] == i and d["start"] < p), None)
                for i, p in ends}
    rng = np.random.default_rng(args.seed)
    built = [contexts(doc, rows, ends, row_book, rng) for doc in docs]
    scored = [doc["end"] - doc["start"] for doc in docs]
    targets = sum(int(np.isin(rows[d["row"], d["start"] + 1:d["end"]], UNSCORED_TARGETS, invert=True).sum())
                  for d in docs)
    print(f"{len(docs)} val documents with a context before them in their row ({targets:,} scored targets), "
          f"contexts of {np.mean([d['start'] for d in docs]):.0f} tokens on average")
    print(f"{'run':<36}" + "".join(f"{name:>12}" for name in CONTEXTS) + f"{'own-alone':>11}")
    for run in args.runs:
        model = load(args.workdir / "runs" / run, args.model, tokenizer_vocab_size(args.workdir / "tokenizer"))
        losses = {name: score(model, [b[name] for b in built], scored, special["pad"]) / targets
                  for name in CONTEXTS}
        print(f"{run:<36}" + "".join(f"{losses[name]:>12.3f}" for name in CONTEXTS)
              + f"{losses['own'] - losses['alone']:>+11.3f}", flush=True)


if __name__ == "__main__":
    main()
