"""Stage 10 (`lumi corpus`): read sources, clean, filter, remove exact duplicates, write a corpus directory.

Sources are local files (``.jsonl``/``.json``/``.parquet``/``.txt``, gzipped or not) or the built-in synthetic world.
The config-free form ``lumi corpus --input PATH...`` builds a one-source config with the format taken from each
file's extension. Output: parquet shards + ``manifest.json`` + ``DATA_CARD.md`` (see ``lumi.corpus.store``), written
into a staging directory and renamed into place only when complete.
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import json
import logging
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated, Iterator, Literal, Union

from pydantic import Field
from tqdm import tqdm

from lumi.config import CONFIG_DIR, ConfigModel, config_to_dict
from lumi.corpus.clean import clean_text
from lumi.corpus.readers import FileFormat, TxtSplit, read_file
from lumi.corpus.store import CORPUS_FORMAT, MANIFEST, ShardWriter
from lumi.corpus.synthetic import SyntheticSourceConfig, SyntheticWorld
from lumi.errors import LumiError
from lumi.files import atomic_write_json, atomic_write_text, staged_output_dir
from lumi.stage import add_common_arguments, stage_config

log = logging.getLogger(__name__)

BYTES_PER_TOKEN_ESTIMATE = 4.0  # typical for English with a 32k SentencePiece vocab; the tokenizer stage measures it


class LocalSourceConfig(ConfigModel):
    type: Literal["local"]
    name: str
    paths: list[str] = Field(min_length=1)
    format: FileFormat = "auto"
    text_column: str = "text"
    txt_split: TxtSplit = "file"
    txt_separator: str = Field("<|endoftext|>", min_length=1)


SourceConfig = Annotated[Union[LocalSourceConfig, SyntheticSourceConfig], Field(discriminator="type")]


class CleaningConfig(ConfigModel):
    enabled: bool = True
    unicode_normalization: Literal["NFC", "NFKC", None] = "NFC"
    min_chars: int = Field(1, ge=1)
    max_chars: int | None = Field(None, ge=1)


class DedupConfig(ConfigModel):
    exact: bool = True


class CorpusConfig(ConfigModel):
    sources: list[SourceConfig] = Field(min_length=1)
    cleaning: CleaningConfig = CleaningConfig()
    dedup: DedupConfig = DedupConfig()
    shard_bytes: int = Field(64 << 20, ge=1 << 10)


def iter_source(source: LocalSourceConfig | SyntheticSourceConfig, base_dir: Path) -> Iterator[tuple[str, str | None]]:
    if isinstance(source, SyntheticSourceConfig):
        world = SyntheticWorld.generate(**source.world_options())
        for index, text in enumerate(world.documents(source.documents)):
            yield f"{source.name}:{index}", text
        return
    for pattern in source.paths:
        full = base_dir / pattern
        paths = [Path(p) for p in sorted(glob.glob(str(full)))] if glob.has_magic(pattern) else [full]
        if not paths:
            raise LumiError(f"source '{source.name}': no file matches {pattern!r}")
        for path in paths:
            yield from read_file(path, source.format, source.text_column, source.txt_split, source.txt_separator)


def new_source_stats() -> dict:
    return {"read": 0, "kept": 0, "dropped": {"non_utf8": 0, "empty": 0, "too_short": 0, "too_long": 0},
            "exact_duplicates": 0, "bytes": 0, "estimated_tokens": 0}


def build_corpus(config: CorpusConfig, out_dir: Path, base_dir: Path = Path(".")) -> dict:
    """Run every source through cleaning, filtering and dedup into ``out_dir``; return the manifest."""
    writer = ShardWriter(out_dir, shard_bytes=config.shard_bytes)
    seen: set[bytes] = set()
    sources: dict[str, dict] = {}
    started = time.time()
    progress = tqdm(unit="doc", desc="corpus", mininterval=1.0, dynamic_ncols=True)
    total_bytes = 0
    for source in config.sources:
        if source.name in sources:
            raise LumiError(f"two sources are named '{source.name}'; names must be unique")
        stats = sources[source.name] = new_source_stats()
        for doc_id, text in iter_source(source, base_dir):
            stats["read"] += 1
            progress.update()
            if text is None:
                stats["dropped"]["non_utf8"] += 1
                continue
            if config.cleaning.enabled:
                text = clean_text(text, config.cleaning.unicode_normalization)
            if not text.strip():
                stats["dropped"]["empty"] += 1
                continue
            if len(text) < config.cleaning.min_chars:
                stats["dropped"]["too_short"] += 1
                continue
            if config.cleaning.max_chars is not None and len(text) > config.cleaning.max_chars:
                stats["dropped"]["too_long"] += 1
                continue
            data = text.encode("utf-8")
            if config.dedup.exact:
                digest = hashlib.blake2b(data, digest_size=16).digest()
                if digest in seen:
                    stats["exact_duplicates"] += 1
                    continue
                seen.add(digest)
            writer.add(text, source.name, doc_id)
            stats["kept"] += 1
            stats["bytes"] += len(data)
            total_bytes += len(data)
            if stats["read"] % 1000 == 0:
                elapsed = max(time.time() - started, 1e-9)
                progress.set_postfix_str(f"{total_bytes / elapsed / 1e6:.1f} MB/s")
        stats["estimated_tokens"] = round(stats["bytes"] / BYTES_PER_TOKEN_ESTIMATE)
        log.info("source %s: read %d, kept %d, dropped %s, exact duplicates %d", source.name, stats["read"],
                 stats["kept"], stats["dropped"], stats["exact_duplicates"])
    progress.close()
    shards = writer.close()
    documents = sum(s["documents"] for s in shards)
    if documents == 0:
        read_counts = ", ".join(f"{name}: read {stats['read']}" for name, stats in sources.items())
        raise LumiError(f"the corpus is empty: every document was filtered out or the inputs held none ({read_counts})")
    resolved = config_to_dict(config)
    return {
        "format": CORPUS_FORMAT,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "documents": documents,
        "bytes": sum(s["bytes"] for s in shards),
        "estimated_tokens": round(sum(s["bytes"] for s in shards) / BYTES_PER_TOKEN_ESTIMATE),
        "seconds": round(time.time() - started, 3),
        "shards": shards,
        "sources": sources,
        "config": resolved,
        "config_sha256": hashlib.sha256(json.dumps(resolved, sort_keys=True).encode()).hexdigest(),
    }


def data_card(manifest: dict) -> str:
    lines = [
        "# Data card",
        "",
        f"Corpus built by `lumi corpus` on {manifest['created']}: {manifest['documents']:,} documents, "
        f"{manifest['bytes']:,} bytes of UTF-8 text (~{manifest['estimated_tokens']:,} tokens at "
        f"{BYTES_PER_TOKEN_ESTIMATE} bytes/token), in {len(manifest['shards'])} parquet shard(s).",
        "",
        "## Sources",
        "",
        "| source | read | kept | non-UTF-8 | empty | too short | too long | exact dups | bytes kept |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, s in manifest["sources"].items():
        d = s["dropped"]
        lines.append(f"| {name} | {s['read']:,} | {s['kept']:,} | {d['non_utf8']:,} | {d['empty']:,} | "
                     f"{d['too_short']:,} | {d['too_long']:,} | {s['exact_duplicates']:,} | {s['bytes']:,} |")
    lines += ["", "## Processing", "", "Cleaning: " + ("Unicode normalization, control characters removed, "
              "whitespace runs collapsed inside lines, at most one blank line between paragraphs."
              if manifest["config"]["cleaning"]["enabled"] else "off."),
              "Deduplication: " + ("exact (BLAKE2b of the cleaned text, across all sources; first copy kept)."
                                   if manifest["config"]["dedup"]["exact"] else "off."),
              "", f"Config sha256: `{manifest['config_sha256']}` (the full config is in manifest.json).", ""]
    return "\n".join(lines)


def configure_parser(parser: argparse.ArgumentParser) -> None:
    add_common_arguments(parser, default_config=CONFIG_DIR / "demo" / "corpus.json", default_output="data/corpus")
    parser.add_argument("--input", nargs="+", type=Path, metavar="PATH",
                        help="config-free form: these files are the only source (format from the extension)")
    parser.add_argument("--txt-split", choices=["file", "line", "paragraph", "separator"], default="file",
                        help="with --input: how a .txt file splits into documents (default: one per file)")
    parser.add_argument("--txt-separator", default="<|endoftext|>", help="with --txt-split separator")


def run(args: argparse.Namespace) -> int:
    base_dir = Path(".")
    if args.input:
        source = {"type": "local", "name": "input", "paths": [str(p) for p in args.input],
                  "txt_split": args.txt_split, "txt_separator": args.txt_separator}
        args.config = None
        config = stage_config(args, CorpusConfig, {"sources": [source]})
    else:
        config = stage_config(args, CorpusConfig)
    with staged_output_dir(args.output_dir, args.force) as staging:
        manifest = build_corpus(config, staging, base_dir)
        atomic_write_json(staging / MANIFEST, manifest)
        atomic_write_text(staging / "DATA_CARD.md", data_card(manifest))
    print(f"corpus: {manifest['documents']:,} documents, {manifest['bytes'] / 1e6:.1f} MB -> {args.output_dir}")
    return 0
