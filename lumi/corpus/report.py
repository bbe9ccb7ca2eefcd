"""``manifest.json`` and ``DATA_CARD.md`` of a corpus directory, from the per-task counts of a finished build."""

from __future__ import annotations

import hashlib
import json
import time
from datetime import datetime, timezone
from typing import Any

from lumi.core.config import config_to_dict
from lumi.corpus.config import CorpusConfig
from lumi.formats.corpus import CORPUS_FORMAT
from lumi.formats.lineage import WORLDS_KEY, worlds_in_config


def config_sha256(config: CorpusConfig) -> str:
    return hashlib.sha256(json.dumps(config_to_dict(config), sort_keys=True).encode()).hexdigest()


def build_manifest(config: CorpusConfig, shards: list[dict[str, Any]], scan: dict[str, dict[str, Any]],
                   plan: dict[str, dict[str, Any]], kept: dict[str, list[int]], run_info: dict[str, Any]) -> dict:
    per_token = config.bytes_per_token
    shards = [{**shard, "estimated_tokens": round(shard["bytes"] / per_token)} for shard in shards]
    total_bytes = sum(shard["bytes"] for shard in shards)
    total_weight = sum(s.weight or 0.0 for s in config.sources)
    sources: dict[str, dict[str, Any]] = {}
    dropped_totals: dict[str, int] = {}
    for source in config.sources:
        read, planned = scan[source.name], plan[source.name]
        documents, num_bytes = kept.get(source.name, [0, 0])
        budget = config.budget_of(source)
        available_tokens = round(planned["available_bytes"] / per_token)
        dropped = dict(read["dropped"])
        for reason, count in dropped.items():
            dropped_totals[reason] = dropped_totals.get(reason, 0) + count
        sources[source.name] = {
            "read": read["read"],
            "kept": documents,
            "dropped": dropped,
            "exact_duplicates": planned["exact_duplicates"],
            "near_duplicates": planned["near_duplicates"],
            "over_budget": planned["over_budget"],
            "bytes": num_bytes,
            "estimated_tokens": round(num_bytes / per_token),  # realized tokens
            "budget_tokens": budget,
            "available_tokens": available_tokens,  # after filters and dedup, before the budget
            "budget_met": None if budget is None else available_tokens >= budget,
            "read_stopped_at_budget": read["stopped_at_budget"],
            "weight": source.weight,
            "weight_share": round(source.weight / total_weight, 4) if source.weight else None,
            "realized_share": round(num_bytes / total_bytes, 4) if total_bytes else 0.0,
        }
    resolved = config_to_dict(config)
    return {
        "format": CORPUS_FORMAT,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "documents": sum(shard["documents"] for shard in shards),
        "bytes": total_bytes,
        "estimated_tokens": round(total_bytes / per_token),
        "bytes_per_token": per_token,
        "seconds": round(time.time() - run_info["started"], 3),
        "executor": {"type": config.executor.type, "tasks": config.executor.tasks},
        "shards": shards,
        "sources": sources,
        "dropped": dropped_totals,
        "config": resolved,
        "config_sha256": config_sha256(config),
        WORLDS_KEY: sorted(worlds_in_config(resolved)),
    }


def _num(value: int | None) -> str:
    return "-" if value is None else f"{value:,}"


def data_card(manifest: dict) -> str:
    config = manifest["config"]
    lines = [
        "# Data card",
        "",
        f"Corpus built by `lumi corpus` on {manifest['created']}: {manifest['documents']:,} documents, "
        f"{manifest['bytes']:,} bytes of UTF-8 text (~{manifest['estimated_tokens']:,} tokens at "
        f"{manifest['bytes_per_token']} bytes/token), in {len(manifest['shards'])} parquet shard(s).",
        "",
        "## Sources",
        "",
        "| source | read | kept | dropped | exact dups | near dups | over budget | budget (tokens) | "
        "realized tokens | budget met |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for name, s in manifest["sources"].items():
        met = {None: "no budget", True: "yes", False: f"no: only {s['available_tokens']:,} available"}
        lines.append(f"| {name} | {s['read']:,} | {s['kept']:,} | {sum(s['dropped'].values()):,} | "
                     f"{s['exact_duplicates']:,} | {s['near_duplicates']:,} | {s['over_budget']:,} | "
                     f"{_num(s['budget_tokens'])} | {s['estimated_tokens']:,} | {met[s['budget_met']]} |")
    reasons = [r for r, n in manifest["dropped"].items() if n]
    if reasons:
        names = list(manifest["sources"])
        lines += ["", "## Dropped documents by reason", "", "| reason | " + " | ".join(names) + " |",
                  "|---|" + "---:|" * len(names)]
        for reason in reasons:
            lines.append(f"| {reason} | " + " | ".join(f"{manifest['sources'][n]['dropped'].get(reason, 0):,}"
                                                       for n in names) + " |")
    filters = config["filters"]
    enabled = [name for name in ("language", "gopher", "c4") if filters[name]["enabled"]]
    near = config["dedup"]["near"]
    lines += [
        "", "## Processing", "",
        "Cleaning: " + ("ftfy Unicode repair, " if config["cleaning"]["fix_unicode"] else "")
        + f"{config['cleaning']['unicode_normalization'] or 'no'} normalization, control characters removed, "
        "whitespace runs collapsed inside lines, at most one blank line between paragraphs."
        if config["cleaning"]["enabled"] else "Cleaning: off.",
        f"Length bounds: {config['cleaning']['min_chars']} to {config['cleaning']['max_chars'] or 'unbounded'} "
        "characters.",
        "Filters: " + (", ".join(enabled) if enabled else "none") + " (settings in manifest.json).",
        "Deduplication: " + ("exact (BLAKE2b of the cleaned text), " if config["dedup"]["exact"] else "")
        + (f"near (MinHash, {near['shingle_words']}-word shingles, {near['num_permutations']} permutations in "
           f"{near['bands']} bands, Jaccard >= {near['threshold']})" if near["enabled"] else "no near-dedup")
        + "; across all sources, the copy in the earliest source is kept.",
        "Budgets: documents are taken in the order of a seeded hash of their content until each source's budget "
        "is met.",
        "", f"Config sha256: `{manifest['config_sha256']}` (the full config is in manifest.json).", "",
    ]
    return "\n".join(lines)
