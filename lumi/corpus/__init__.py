"""Stage 10 machinery: sources, readers, filters, dedup and the build engine (its command: lumi.stages.corpus)."""
