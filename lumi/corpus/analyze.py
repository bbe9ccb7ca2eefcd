"""``lumi corpus --analyze-only``: estimate sizes and budgets from a sample of each source, writing nothing.

For each source the first ``analyze.sample_documents`` documents go through the same cleaning and filters as a
build. From them: the share kept, tokens per kept document, duplicates within the sample, and how many documents
must be read to meet the budget. A local source's total is extrapolated from its file sizes (compressed files
count at their on-disk size, so the estimate is a lower bound for them); a hub source's total is unknown offline.
"""

from __future__ import annotations

import hashlib
from itertools import islice
from typing import Any

from lumi.corpus.config import CorpusConfig, LocalSourceConfig
from lumi.corpus.filters import DocumentFilter
from lumi.corpus.sources import iter_source, local_paths


def analyze_source(config: CorpusConfig, source) -> dict[str, Any]:
    document_filter = DocumentFilter(config.cleaning, config.filters, frozenset(source.skip_filters))
    read = kept = raw_bytes = kept_bytes = duplicates = 0
    seen: set[bytes] = set()
    for _, raw in islice(iter_source(source), config.analyze.sample_documents):
        read += 1
        if raw is None:
            continue
        raw_bytes += len(raw.encode("utf-8", errors="surrogateescape"))
        text, _ = document_filter.apply(raw)
        if text is None:
            continue
        data = text.encode("utf-8")
        digest = hashlib.blake2b(data, digest_size=16).digest()
        if digest in seen:
            duplicates += 1
            continue
        seen.add(digest)
        kept += 1
        kept_bytes += len(data)
    per_token = config.bytes_per_token
    tokens_per_read = kept_bytes / per_token / read if read else 0.0
    budget = config.budget_of(source)
    available = None
    if isinstance(source, LocalSourceConfig) and raw_bytes:
        file_bytes = sum(p.stat().st_size for p in local_paths(source))
        available = round(file_bytes * kept_bytes / raw_bytes / per_token)
    return {
        "sampled": read,
        "kept_fraction": round(kept / read, 4) if read else 0.0,
        "duplicate_fraction": round(duplicates / read, 4) if read else 0.0,
        "tokens_per_kept_document": round(kept_bytes / per_token / kept) if kept else 0,
        "estimated_available_tokens": available,
        "budget_tokens": budget,
        "documents_to_read_for_budget": round(budget / tokens_per_read) if budget and tokens_per_read else None,
        "budget_reachable": None if budget is None or available is None else available >= budget,
    }


def analyze(config: CorpusConfig) -> dict[str, dict[str, Any]]:
    return {source.name: analyze_source(config, source) for source in config.sources}


def format_analysis(report: dict[str, dict[str, Any]]) -> str:
    columns = ["sampled", "kept_fraction", "duplicate_fraction", "tokens_per_kept_document",
               "estimated_available_tokens", "budget_tokens", "documents_to_read_for_budget", "budget_reachable"]
    rows = [["source"] + columns] + [[name] + ["-" if r[c] is None else str(r[c]) for c in columns]
                                     for name, r in report.items()]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(row, widths)) for row in rows)
