"""One module per stage: its flags and its run(); no stage module imports another (docs/ARCHITECTURE.md)."""
