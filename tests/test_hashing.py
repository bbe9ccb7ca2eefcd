"""The seeded split hashes (lumi/core/hashing.py) give the values the three callers computed before they shared them:
every tokenizer held-out set, packed train/val split and corpus budget order stays where it was.

The references are the callers' former formulas restated in plain Python integers (independent of the numpy
vector code), plus the published splitmix64 test vectors."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from lumi.core import hashing
from lumi.corpus import steps as corpus_steps
from lumi.data import tokenizer_training
from lumi.data.packing import DocumentSplitter

MASK = (1 << 64) - 1
SEEDS = [0, 1, 1234, (1 << 64) - 1]


def reference_splitmix64(state: int) -> int:
    z = (state + 0x9E3779B97F4A7C15) & MASK
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
    return z ^ (z >> 31)


def test_splitmix64_matches_the_published_vectors():
    # Vigna's splitmix64: state 0 -> 0xE220A8397B1DCDAF; state 1234567 -> 6457827717110365317, 3203168211198807973
    states = np.array([0, 1234567, (1234567 + 0x9E3779B97F4A7C15) & MASK], dtype=np.uint64)
    assert [int(v) for v in hashing.splitmix64(states)] == [0xE220A8397B1DCDAF, 6457827717110365317,
                                                            3203168211198807973]
    assert [int(v) for v in hashing.splitmix64(states)] == [reference_splitmix64(int(s)) for s in states]


@pytest.mark.parametrize("seed", SEEDS)
def test_tokenizer_holdout_draws_are_the_keyed_blake2b_of_the_text(seed):
    assert tokenizer_training.text_draws is hashing.text_draws  # the held-out / sample draw of CorpusSample._route
    for text in ["", "a", "héllo wörld\n", "x" * 1000]:
        digest = hashlib.blake2b(text.encode("utf-8"), digest_size=16, key=seed.to_bytes(8, "little")).digest()
        expected = (int.from_bytes(digest[:8], "little") / 2**64, int.from_bytes(digest[8:], "little") / 2**64)
        assert hashing.text_draws(text, seed) == expected


@pytest.mark.parametrize("seed", SEEDS + [-3])
def test_packing_split_keys_are_splitmix64_of_index_xor_seed(seed):
    seed_key = reference_splitmix64(seed & MASK)
    expected = [(reference_splitmix64(i ^ seed_key) >> 11) / (1 << 53) for i in range(40, 50)]
    assert DocumentSplitter(100, seed=seed, val_fraction=0.1).keys(40, 10).tolist() == expected
    assert hashing.index_uniforms(seed, 40, 10).tolist() == expected


@pytest.mark.parametrize("seed", SEEDS[:3])
def test_corpus_budget_order_keys_are_the_salted_content_digest(seed):
    assert corpus_steps.digest_keys is hashing.digest_keys  # the budget order of the corpus plan
    contents = [hashlib.blake2b(str(i).encode(), digest_size=16).digest() for i in range(8)]
    digests = np.frombuffer(b"".join(contents), dtype=np.uint8).reshape(-1, 16)
    salt = int.from_bytes(hashlib.blake2b(f"lumi-budget:{seed}".encode(), digest_size=8).digest(), "little")
    expected = []
    for content in contents:
        key = int.from_bytes(content[:8], "little") ^ salt
        expected.append(((key * 0x9E3779B97F4A7C15) & MASK) ^ (key >> 29))
    assert [int(k) for k in hashing.digest_keys(digests, seed)] == expected
