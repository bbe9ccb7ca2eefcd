"""MinHash signatures and LSH clustering for near-duplicate removal across all sources.

Hand-written with numpy rather than taken from datatrove: datatrove's ``MinhashDedupSignature`` needs a spaCy word
tokenizer for English and hashes every shingle in a Python loop; here words come from one regex, each word is
hashed once (xxh3, identical in every process: Python's ``hash`` is salted per process), shingles are combined and
permuted with vectorised uint64 arithmetic, and the permutations are the multiply-shift universal family
(``(a * x + b) >> 32`` with odd ``a``). Clustering happens in one task over all signatures: LSH bands propose
candidate pairs, and a pair counts only when the Jaccard similarity estimated from the whole signature reaches the
threshold, which removes LSH's chance collisions. Within a cluster the document with the smallest priority key is
kept (the planner uses source order, then content hash), so the result does not depend on how work was split.
"""

from __future__ import annotations

import re

import numpy as np
import xxhash

from lumi.corpus.config import NearDedupConfig

_WORD = re.compile(r"\w+")
_SHINGLE_MULTIPLIER = np.uint64(0x9E3779B97F4A7C15)
_BAND_MULTIPLIER = np.uint64(0xC2B2AE3D27D4EB4F)
_MAX_ROWS = 4096  # shingles permuted at once: bounds the temporary array for book-length documents


class MinHasher:
    def __init__(self, config: NearDedupConfig):
        self.shingle_words = config.shingle_words
        rng = np.random.default_rng(config.seed)
        self.a = rng.integers(1, 2**63, size=config.num_permutations, dtype=np.uint64) * np.uint64(2) + np.uint64(1)
        self.b = rng.integers(0, 2**63, size=config.num_permutations, dtype=np.uint64)

    def shingles(self, text: str) -> np.ndarray:
        """64-bit hashes of the overlapping word n-grams of the lower-cased text (one n-gram if it is shorter)."""
        words = _WORD.findall(text.lower())
        if not words:
            return np.zeros(0, dtype=np.uint64)
        encoded = "\0".join(words).encode("utf-8").split(b"\0")  # one encode call instead of one per word
        hashes = np.fromiter(map(xxhash.xxh3_64_intdigest, encoded), dtype=np.uint64, count=len(words))
        width = min(self.shingle_words, len(hashes))
        count = len(hashes) - width + 1
        combined = hashes[:count].copy()
        for offset in range(1, width):
            combined = combined * _SHINGLE_MULTIPLIER + hashes[offset:offset + count]
        return np.unique(combined)

    def empty_signature(self) -> np.ndarray:
        return np.full(len(self.a), np.iinfo(np.uint32).max, dtype=np.uint32)

    def signature(self, text: str) -> np.ndarray:
        """``num_permutations`` uint32 minima; the empty signature for a text without words."""
        shingles = self.shingles(text)
        result = self.empty_signature()
        for start in range(0, len(shingles), _MAX_ROWS):
            block = shingles[start:start + _MAX_ROWS, None]
            permuted = ((block * self.a + self.b) >> np.uint64(32)).astype(np.uint32)
            np.minimum(result, permuted.min(axis=0), out=result)
        return result


def band_keys(signatures: np.ndarray, bands: int) -> np.ndarray:
    """(documents, bands) uint64: each band's rows folded into one key."""
    rows = signatures.shape[1] // bands
    grouped = signatures.reshape(len(signatures), bands, rows).astype(np.uint64)
    keys = np.zeros(grouped.shape[:2], dtype=np.uint64)
    for row in range(rows):
        keys = keys * _BAND_MULTIPLIER + grouped[:, :, row]
    return keys


def near_duplicate_of(signatures: np.ndarray, priority: np.ndarray, config: NearDedupConfig) -> np.ndarray:
    """For each document, the index of the document kept in its cluster (itself when it is kept or unique).

    ``priority``: one sortable key per document, smaller is kept. Documents are visited in priority order, so in
    each LSH bucket the first member is the preferred one; every other member is compared with it."""
    count = len(signatures)
    parent = np.arange(count)
    if count < 2:
        return parent
    order = np.argsort(priority, kind="stable")
    rank = np.empty(count, dtype=np.int64)
    rank[order] = np.arange(count)
    keys = band_keys(signatures, config.bands)
    heads, members = [], []
    for band in range(config.bands):
        column = keys[order, band]
        sorted_positions = np.argsort(column, kind="stable")  # stable: priority order within equal keys
        sorted_keys = column[sorted_positions]
        starts = np.r_[True, sorted_keys[1:] != sorted_keys[:-1]]
        group_head = np.maximum.accumulate(np.where(starts, np.arange(count), 0))
        same = ~starts
        heads.append(order[sorted_positions[group_head[same]]])
        members.append(order[sorted_positions[same]])
    pairs = np.unique(np.stack([np.concatenate(heads), np.concatenate(members)], axis=1), axis=0)
    if len(pairs) == 0:
        return parent
    similar = np.concatenate([
        (signatures[chunk[:, 0]] == signatures[chunk[:, 1]]).mean(axis=1) >= config.threshold
        for chunk in np.array_split(pairs, max(1, len(pairs) // 65536 + 1))
    ])
    return _cluster_roots(parent, pairs[similar], rank)


def _cluster_roots(parent: np.ndarray, pairs: np.ndarray, rank: np.ndarray) -> np.ndarray:
    """Union-find over the verified pairs (few: one per duplicate), rooted at the best-priority member."""
    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for a, b in pairs.tolist():
        root_a, root_b = find(a), find(b)
        if root_a != root_b:
            if rank[root_b] < rank[root_a]:
                root_a, root_b = root_b, root_a
            parent[root_b] = root_a
    return np.array([find(i) for i in range(len(parent))])
