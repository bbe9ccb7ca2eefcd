#!/usr/bin/env python3
"""Which SentencePiece model type to ship: bytes/token, round trip and exact export to llama.cpp, measured.

For the synthetic world (the demo's corpus) and real English text (Gutenberg + tinyshakespeare samples), trains a
``bpe`` and a ``unigram`` tokenizer with stage 20's settings on every other document, then on the held-out documents
measures bytes per token, the SentencePiece round trip, and how many texts llama.cpp's ``llama`` (SPM) tokenizer
encodes to exactly SentencePiece's ids when the vocabulary is written to a GGUF unchecked (export refuses unigram).

    python benchmarks/bench_tokenizer_export.py --samples-dir ../shared/data/samples
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from helpers import load_sample_documents, make_corpus_dir  # noqa: E402
from packed_helpers import nano_architecture  # noqa: E402
from sentencepiece import sentencepiece_model_pb2 as model_pb2  # noqa: E402

from lumi.data.synthetic import SyntheticWorld  # noqa: E402
from lumi.eval.gguf_agreement import llama_ids, open_gguf  # noqa: E402
from lumi.formats.gguf import write_gguf  # noqa: E402
from lumi.formats.gguf_tokenizer import build_vocab  # noqa: E402
from lumi.formats.tokenizer import load_sentencepiece  # noqa: E402
from lumi.model import ArchitectureConfig, build_model  # noqa: E402
from lumi.data.tokenizer_training import TokenizerConfig, train_tokenizer  # noqa: E402


def corpora(samples_dir: Path) -> dict[str, list[str]]:
    real = load_sample_documents(samples_dir, max_bytes_per_source=2_000_000)
    return {"world": list(SyntheticWorld.generate(seed=0, num_people=80, num_places=40).documents(6000, seed=1)),
            "gutenberg+shakespeare": real["gutenberg"] + real["tinyshakespeare"]}


def measure(texts: list[str], model_type: str, vocab_size: int, scratch: Path) -> dict[str, float]:
    train, held_out = texts[::2], texts[1::2][:400]
    tokenizer_dir = scratch / f"tok-{model_type}"
    train_tokenizer(make_corpus_dir(scratch / f"corpus-{model_type}", train), tokenizer_dir,
                    TokenizerConfig(vocab_size=vocab_size, model_type=model_type, holdout_fraction=0.02,
                                    num_threads=1), force=True)
    sp = load_sentencepiece(tokenizer_dir)
    vocab = build_vocab(model_pb2.ModelProto.FromString((tokenizer_dir / "spm.model").read_bytes()))
    torch.manual_seed(0)
    model = build_model(ArchitectureConfig(**nano_architecture(len(vocab.tokens), 64, tie_embeddings=True)))
    write_gguf(model, vocab, scratch / f"{model_type}.gguf", "f32")
    llm = open_gguf(scratch / f"{model_type}.gguf", n_ctx=64)
    ids = sp.encode(held_out)
    total_bytes = sum(len(t.encode("utf-8")) for t in held_out)
    return {"bytes_per_token": total_bytes / sum(map(len, ids)),
            "roundtrip": sum(sp.decode(i) == t for i, t in zip(ids, held_out)) / len(held_out),
            "llama_cpp_identical": sum(i == llama_ids(llm, t) for i, t in zip(ids, held_out)) / len(held_out),
            "texts": len(held_out)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples-dir", type=Path, required=True)
    args = parser.parse_args()
    vocab_sizes = {"world": 800, "gutenberg+shakespeare": 4000}  # the world's small word list caps unigram at ~866
    torch.set_num_threads(1)
    print(f"{'corpus':24} {'vocab':>5} {'type':8} {'bytes/token':>11} {'round trip':>10} "
          f"{'llama.cpp ids identical':>24}")
    for name, texts in corpora(args.samples_dir).items():
        for model_type in ("bpe", "unigram"):
            with tempfile.TemporaryDirectory() as scratch:
                r = measure(texts, model_type, vocab_sizes[name], Path(scratch))
            print(f"{name:24} {vocab_sizes[name]:5} {model_type:8} {r['bytes_per_token']:11.3f} {r['roundtrip']:10.3f} "
                  f"{r['llama_cpp_identical']:17.3f} of {r['texts']}")


if __name__ == "__main__":
    main()
