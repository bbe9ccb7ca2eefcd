"""The corpus directory format that stage 10 writes and stages 20 and 30 read.

A corpus directory holds parquet shards (``shard_*.parquet``; columns ``text``, ``source``, ``id``; zstd-compressed),
``manifest.json`` (format version, totals, per-shard file/sha256/documents/bytes/estimated_tokens, per-source counts,
config and its hash) and ``DATA_CARD.md``. Readers take the shard list, in order, from the manifest, which is
written last: a directory without one is not (yet) a corpus. Parquet is used because it is columnar (readers load
only ``text``), compressed, and readable by ``datasets.load_dataset("parquet", ...)`` and every dataframe tool
without code of ours.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from lumi.core.errors import LumiError
from lumi.core.files import read_manifest_file, sha256_file, verify_file

CORPUS_FORMAT = "lumi-corpus/1"
MANIFEST = "manifest.json"
SCHEMA = pa.schema([("text", pa.string()), ("source", pa.string()), ("id", pa.string())])


class ShardWriter:
    """Writes documents into parquet shards of about ``shard_bytes`` of text each and records their stats."""

    def __init__(self, directory: Path, shard_bytes: int = 64 << 20, row_group_docs: int = 2048,
                 prefix: str = "shard_"):
        self.directory = Path(directory)
        self.prefix = prefix
        self.shard_bytes = shard_bytes
        self.row_group_docs = row_group_docs
        self.shards: list[dict[str, Any]] = []
        self._writer: pq.ParquetWriter | None = None
        self._buffer: dict[str, list[str]] = {"text": [], "source": [], "id": []}
        self._shard_docs = 0
        self._shard_bytes = 0

    def add(self, text: str, source: str, doc_id: str) -> None:
        self._buffer["text"].append(text)
        self._buffer["source"].append(source)
        self._buffer["id"].append(doc_id)
        self._shard_docs += 1
        self._shard_bytes += len(text.encode("utf-8"))
        if len(self._buffer["text"]) >= self.row_group_docs:
            self._flush_rows()
        if self._shard_bytes >= self.shard_bytes:
            self._close_shard()

    def _flush_rows(self) -> None:
        if not self._buffer["text"]:
            return
        if self._writer is None:
            path = self.directory / f"{self.prefix}{len(self.shards):05d}.parquet"
            self._writer = pq.ParquetWriter(path, SCHEMA, compression="zstd")
        self._writer.write_table(pa.table(self._buffer, schema=SCHEMA))
        self._buffer = {"text": [], "source": [], "id": []}

    def _close_shard(self) -> None:
        self._flush_rows()
        if self._writer is None:
            return
        path = Path(self._writer.where)
        self._writer.close()
        self._writer = None
        self.shards.append({"file": path.name, "sha256": sha256_file(path), "file_bytes": path.stat().st_size,
                            "documents": self._shard_docs, "bytes": self._shard_bytes})
        self._shard_docs = self._shard_bytes = 0

    def close(self) -> list[dict[str, Any]]:
        self._close_shard()
        return self.shards


def read_manifest(corpus_dir: str | Path) -> dict[str, Any]:
    """The manifest, every shard it lists checked to exist with its recorded size (``file_bytes``; manifests
    older than that field are checked for existence only)."""
    corpus_dir = Path(corpus_dir)
    manifest = read_manifest_file(corpus_dir, MANIFEST, CORPUS_FORMAT, what="corpus")
    for shard in manifest["shards"]:
        verify_file(corpus_dir / shard["file"], corpus_dir / MANIFEST, size=shard.get("file_bytes"))
    return manifest


def iter_text_batches(corpus_dir: str | Path, batch_docs: int = 1024) -> Iterator[list[str]]:
    """Yield the corpus's texts in manifest order, in batches, reading one parquet row group at a time
    (memory stays bounded by the row-group size, whatever the corpus size).

    Each shard's sha256 is checked against the manifest just before it is read, so flipped or cut bytes are
    named instead of surfacing as a zstd or arrow error (or, worse, as silently different text): hashing runs at
    ~770 MB/s on one core, under 1% of the tokenization that follows (docs/RELIABILITY.md)."""
    corpus_dir = Path(corpus_dir)
    manifest = read_manifest(corpus_dir)
    for shard in manifest["shards"]:
        path = corpus_dir / shard["file"]
        verify_file(path, corpus_dir / MANIFEST, sha256=shard.get("sha256"))
        try:
            parquet = pq.ParquetFile(path)
            for batch in parquet.iter_batches(batch_size=batch_docs, columns=["text"]):
                texts = batch.column(0).to_pylist()
                del batch  # not held (in Arrow form too) while the caller works on the texts
                yield texts
        except (pa.ArrowException, OSError) as exc:  # changed after the hash check, or a manifest without hashes
            raise LumiError(f"{path}: not a readable corpus shard ({exc})") from None
