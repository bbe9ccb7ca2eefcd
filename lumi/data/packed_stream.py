"""Training batches from one or more packed data directories, mixed by weight, deterministic and resumable.

Source choice is a deterministic deficit rule rather than a random draw: the next row comes from the source whose
count lags its target share the most (``weight * rows_drawn - rows_taken``, ties to the first listed), so after any
number of rows the realized mix is within one row of the target for every source. Within a source, rows are taken
in a seeded random order, reshuffled every epoch (``numpy`` permutation seeded by ``(seed, source, epoch)``), so the
whole sampler state is a handful of counters that a checkpoint stores and restores exactly.

Every process walks the same global stream. Optimizer step ``s`` takes the next ``micro * accum * world`` rows; micro
batch ``a`` of rank ``r`` is the slice ``[(a * world + r) * micro, ... + micro)``, so ranks never share rows and the
global batch does not depend on how it is split across processes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lumi.core.errors import LumiError
from lumi.formats.packed import PackedSplit, load_packed_split, read_packed_manifest
from lumi.formats.packed import check_packed_tokenizer


@dataclass
class PackedSource:
    """One packed data directory: its train and val splits."""

    path: Path
    train: PackedSplit
    val: PackedSplit

    @property
    def name(self) -> str:
        return self.path.name


def open_sources(data_dirs: list[str | Path], tokenizer_dir: str | Path) -> list[PackedSource]:
    """Open every data dir, refusing one packed with another tokenizer or with a different row length."""
    if not data_dirs:
        raise LumiError("no packed data: pass --data-dirs DIR [DIR ...] (stage 30 output)")
    sources = []
    for data_dir in map(Path, data_dirs):
        check_packed_tokenizer(data_dir, tokenizer_dir)
        sources.append(PackedSource(data_dir, load_packed_split(data_dir, "train"), load_packed_split(data_dir, "val")))
        if sources[-1].train.num_rows == 0:
            raise LumiError(f"{data_dir}: the train split has no rows")
    lengths = {s.train.seq_len for s in sources}
    if len(lengths) > 1:
        found = ", ".join(f"{s.path}: {s.train.seq_len}" for s in sources)
        raise LumiError(f"packed data dirs have different seq_len ({found}); re-pack them with one seq_len")
    vocab_sizes = {int(read_packed_manifest(s.path)["vocab_size"]) for s in sources}
    if len(vocab_sizes) > 1:
        raise LumiError(f"packed data dirs have different vocab sizes {sorted(vocab_sizes)}")
    return sources


class MixedRowSampler:
    """The global row stream over several sources; see the module docstring for the order it produces."""

    def __init__(self, row_counts: list[int], weights: list[float], seed: int):
        if len(row_counts) != len(weights) or not row_counts:
            raise ValueError("one weight per source is required")
        total = float(sum(weights))
        self.row_counts = [int(n) for n in row_counts]
        self.weights = [w / total for w in weights]
        self.seed = seed
        self.taken = [0] * len(row_counts)
        self.drawn = 0
        self._orders: dict[int, tuple[int, np.ndarray]] = {}  # source -> (epoch, permutation)

    def _row(self, source: int, index: int) -> int:
        epoch, position = divmod(index, self.row_counts[source])
        cached = self._orders.get(source)
        if cached is None or cached[0] != epoch:
            order = np.random.default_rng([self.seed, source, epoch]).permutation(self.row_counts[source])
            self._orders[source] = cached = (epoch, order)
        return int(cached[1][position])

    def next_rows(self, count: int) -> list[tuple[int, int]]:
        """The next ``count`` rows of the stream as (source index, row index)."""
        rows = []
        for _ in range(count):
            self.drawn += 1
            lag = [w * self.drawn - t for w, t in zip(self.weights, self.taken)]
            source = max(range(len(lag)), key=lambda i: (lag[i], -i))
            rows.append((source, self._row(source, self.taken[source])))
            self.taken[source] += 1
        return rows

    def epochs(self) -> list[float]:
        return [t / n for t, n in zip(self.taken, self.row_counts)]

    def realized_mix(self) -> list[float]:
        return [t / max(self.drawn, 1) for t in self.taken]

    def state_dict(self) -> dict[str, Any]:
        return {"taken": list(self.taken), "drawn": self.drawn, "row_counts": list(self.row_counts),
                "weights": list(self.weights), "seed": self.seed}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key in ("row_counts", "weights", "seed"):
            if state[key] != getattr(self, key):
                raise LumiError(f"checkpoint data state does not match the data: {key} was {state[key]}, "
                                f"now {getattr(self, key)} (were the data dirs or weights changed?)")
        self.taken, self.drawn = list(state["taken"]), int(state["drawn"])


class BatchStream:
    """Turns the sampler's global stream into this rank's micro-batches of token ids."""

    def __init__(self, sources: list[PackedSource], sampler: MixedRowSampler, micro_batch_size: int,
                 grad_accumulation: int, rank: int = 0, world_size: int = 1):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world of {world_size}")
        self.sources, self.sampler = sources, sampler
        self.micro, self.accum, self.rank, self.world = micro_batch_size, grad_accumulation, rank, world_size

    @property
    def global_batch_rows(self) -> int:
        return self.micro * self.accum * self.world

    def next_step(self) -> list[torch.Tensor]:
        """The ``grad_accumulation`` micro-batches (LongTensor, micro x seq_len) of this rank for one optimizer step."""
        rows = self.sampler.next_rows(self.global_batch_rows)
        batches = []
        for micro_step in range(self.accum):
            start = (micro_step * self.world + self.rank) * self.micro
            picked = rows[start:start + self.micro]
            batch = np.stack([self.sources[source].train.rows[row] for source, row in picked])
            batches.append(torch.from_numpy(batch.astype(np.int64)))
        return batches
