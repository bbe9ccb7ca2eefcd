"""Test and benchmark text for stage 10, built from the real samples in shared/data/samples.

Documents are new arrangements of real English sentences (C4, Dolma, Wikipedia, Gutenberg): realistic for the
cleaning, language and quality filters, and distinct from each other (two documents share a sentence rarely and a
long passage never), so any pair that near-dedup joins is a planted one. Planted duplicates are placed in another
source than their original: exact copies, and near copies with a fraction of their words replaced.
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

_SENTENCE = re.compile(r"(?<=[.!?])\s+(?=[A-Z\"'])")


def sentence_pool(samples_dir: Path) -> list[str]:
    texts = [json.loads(line)["text"] for name in ("c4_demo_llamafactory_first150.jsonl", "dolma_cc_en_head-0091.jsonl")
             for line in (samples_dir / name).read_text(encoding="utf-8").splitlines() if line.strip()]
    texts += (samples_dir / "wiki_demo_llamafactory_first15.txt").read_text(encoding="utf-8").splitlines()
    for name in ("gutenberg_pg11.txt", "gutenberg_pg84.txt"):
        texts += (samples_dir / name).read_text(encoding="utf-8").split("\n\n")
    sentences = {" ".join(s.split()) for text in texts for s in _SENTENCE.split(text)}
    return sorted(s for s in sentences if 40 <= len(s) <= 400 and s[-1] in ".!?\"'")


def make_document(pool: list[str], rng: random.Random, sentences: tuple[int, int] = (12, 40)) -> str:
    chosen = rng.sample(pool, rng.randint(*sentences))
    paragraphs, start = [], 0
    while start < len(chosen):
        size = rng.randint(3, 7)
        paragraphs.append(" ".join(chosen[start:start + size]))
        start += size
    return "\n\n".join(paragraphs)


def replace_words(text: str, fraction: float, rng: random.Random, vocabulary: list[str]) -> str:
    """Replace ``fraction`` of the words (whitespace-separated, newlines kept) by random vocabulary words."""
    tokens = re.split(r"( +|\n+)", text)
    word_positions = [i for i, t in enumerate(tokens) if t.strip()]
    for i in rng.sample(word_positions, max(1, round(fraction * len(word_positions)))):
        tokens[i] = rng.choice(vocabulary)
    return "".join(tokens)


def planted_sources(pool: list[str], seed: int, distinct: int, exact: int, near: int, num_sources: int = 3,
                    near_fraction: float = 0.05) -> tuple[dict[str, list[str]], list[tuple[str, str, str]]]:
    """``num_sources`` lists of documents: ``distinct`` originals spread over the sources, plus ``exact`` exact and
    ``near`` near copies of originals, each appended to a source other than its original's. Returns the sources
    and the plants as (kind, original id, copy id), ids being ``source:index``."""
    rng = random.Random(seed)
    vocabulary = sorted({w for s in pool for w in s.split() if w.isalpha()})
    names = [f"source{i}" for i in range(num_sources)]
    sources: dict[str, list[str]] = {name: [] for name in names}
    originals = []
    for _ in range(distinct):
        name = rng.choice(names)
        originals.append((name, len(sources[name])))
        sources[name].append(make_document(pool, rng))
    plants = []
    for kind, count in (("exact", exact), ("near", near)):
        for name, index in rng.sample(originals, count):
            text = sources[name][index]
            target = rng.choice([n for n in names if n != name])
            copy = text if kind == "exact" else replace_words(text, near_fraction, rng, vocabulary)
            plants.append((kind, f"{name}:{index}", f"{target}:{len(sources[target])}"))
            sources[target].append(copy)
    return sources, plants


def write_jsonl_sources(sources: dict[str, list[str]], directory: Path) -> dict[str, Path]:
    """One ``NAME.jsonl`` per source with fields text and id (``source:index``)."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, texts in sources.items():
        paths[name] = directory / f"{name}.jsonl"
        with open(paths[name], "w", encoding="utf-8") as handle:
            for index, text in enumerate(texts):
                handle.write(json.dumps({"text": text, "id": f"{name}:{index}"}) + "\n")
    return paths
