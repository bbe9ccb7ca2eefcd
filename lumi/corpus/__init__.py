"""Stage 10: turn raw sources into a clean, deduplicated corpus directory (parquet shards + manifest)."""
