"""Seeded hashing: the one place that decides which side of a split, or where in an order, an item lands.

Every split and sampling order in the pipeline comes from a keyed hash of the item (its text, its index, its content
digest) and the config's seed, never from an RNG stream, so the result does not depend on corpus order, sharding or
batch size, and one seed gives the same split on every machine. Stable formulas (no salted ``hash()``, no library
RNG whose stream may change between versions).

The three recipes below are frozen: each one decides splits that are already on disk (tokenizer held-out text, packed
train/val rows, corpus budget order), so changing its bytes or formula would silently move documents between splits
of existing outputs. A new caller picks the recipe that fits its input rather than adding a fourth.
"""

from __future__ import annotations

import hashlib

import numpy as np

U64 = (1 << 64) - 1
GOLDEN_GAMMA = 0x9E3779B97F4A7C15  # 2**64 / golden ratio: splitmix64's increment, and a multiplicative mixer


def text_draws(text: str, seed: int) -> tuple[float, float]:
    """Two uniform numbers in [0, 1) fixed by ``text`` and ``seed`` (BLAKE2b keyed with the seed over the UTF-8
    text): equal texts get equal draws, so duplicates land on the same side of a split."""
    digest = hashlib.blake2b(text.encode("utf-8"), digest_size=16, key=seed.to_bytes(8, "little")).digest()
    return int.from_bytes(digest[:8], "little") / 2**64, int.from_bytes(digest[8:], "little") / 2**64


def splitmix64(values: np.ndarray) -> np.ndarray:
    """The splitmix64 output function of state ``values`` (uint64), vectorized. Hand-written because numpy has no
    keyed per-element hash, and a stable formula keeps splits identical across library versions (uint64 wraps)."""
    z = values + np.uint64(GOLDEN_GAMMA)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def index_uniforms(seed: int, start: int, count: int) -> np.ndarray:
    """A uniform float64 in [0, 1) for each index ``start .. start+count-1``: splitmix64 of the index xor the
    splitmix64 of the seed (any Python int, taken modulo 2**64), top 53 bits."""
    seed_key = splitmix64(np.array([seed & U64], dtype=np.uint64))[0]
    indices = np.arange(start, start + count, dtype=np.uint64)
    return (splitmix64(indices ^ seed_key) >> np.uint64(11)) * (1.0 / (1 << 53))


def digest_keys(digests: np.ndarray, seed: int) -> np.ndarray:
    """A seeded uint64 key per row of ``digests`` (n x 16 uint8 content hashes), for a seeded order of documents:
    the digest's first 8 bytes (little-endian) xor a salt derived from the seed, then mixed."""
    salt = int.from_bytes(hashlib.blake2b(f"lumi-budget:{seed}".encode(), digest_size=8).digest(), "little")
    keys = digests.view("<u8")[:, 0] ^ np.uint64(salt)
    return (keys * np.uint64(GOLDEN_GAMMA)) ^ (keys >> np.uint64(29))
